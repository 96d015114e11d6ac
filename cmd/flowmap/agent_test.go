package main

import (
	"encoding/json"
	"flag"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flowmap/flowmap/internal/sandboxtest"
	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/sandbox"
	"github.com/flowmap/flowmap/server"
	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"
)

// cmdSubnet keeps this package's sandboxes apart from other packages'.
var cmdSubnet = netip.MustParsePrefix("198.51.100.64/27")

// httpClient gives up on an agent that does not answer, so that a hung
// agent fails the test instead of hanging it.
var httpClient = &http.Client{Timeout: 10 * time.Second}

// buildFlowmap builds the binary once per test.
func buildFlowmap(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "flowmap")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// agentProc is a running `flowmap agent`.
type agentProc struct {
	cmd  *exec.Cmd
	addr string
	done chan error
}

func startAgent(t *testing.T, bin string, args ...string) *agentProc {
	t.Helper()
	return startAgentUnder(t, []string{bin}, args...)
}

// startAgentUnder is startAgent with the binary run by a command, as
// under: its last element is the binary, and "agent" and args follow.
func startAgentUnder(t *testing.T, under []string, args ...string) *agentProc {
	t.Helper()
	addr := freePort(t)
	cmd := exec.Command(under[0], append(append(under[1:], "agent", "--listen", addr, "--interval", "200ms"), args...)...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start agent: %v", err)
	}
	p := &agentProc{cmd: cmd, addr: addr, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := httpClient.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not ready after 10s: %v", err)
		}
		select {
		case err := <-p.done:
			t.Fatalf("agent exited before it was ready: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop sends sig and waits for the agent to exit.
func (p *agentProc) stop(t *testing.T, sig syscall.Signal) error {
	t.Helper()
	p.cmd.Process.Signal(sig)
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("agent still running 10s after %s", sig)
		return nil
	}
}

func (p *agentProc) get(t *testing.T, path string) string {
	t.Helper()
	resp, err := httpClient.Get("http://" + p.addr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", path, resp.Status, b)
	}
	return string(b)
}

// TestAgent runs the agent binary on a sandbox: it serves the flows it
// counts and its metrics, and SIGTERM leaves nothing attached.
func TestAgent(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	testenv.MustHaveCommand(t, "go")
	if err := sandbox.Cleanup("fma"); err != nil {
		t.Fatal(err)
	}
	sb := sandboxtest.New(t, sandbox.Options{Prefix: "fma", Subnet: cmdSubnet})
	a, b := addHost(t, sb, "a"), addHost(t, sb, "b")
	bin := buildFlowmap(t)
	p := startAgent(t, bin, "--interfaces", "fma-*")

	if got := p.get(t, "/healthz"); strings.TrimSpace(got) != "ok" {
		t.Errorf("/healthz = %q, want ok", got)
	}
	// The inventory's sources come up within moments of the datapath.
	var ready server.Readiness
	up := map[string]bool{}
	deadline := time.Now().Add(5 * time.Second)
	for !up["netns"] || !up["host"] {
		if time.Now().After(deadline) {
			t.Fatalf("/readyz = %+v after 5s, want ready with the netns and host sources up", ready)
		}
		time.Sleep(50 * time.Millisecond)
		var sources []struct {
			Name string
			Up   bool
		}
		ready.Sources = &sources
		if err := json.Unmarshal([]byte(p.get(t, "/readyz")), &ready); err != nil {
			t.Fatalf("decode /readyz: %v", err)
		}
		if !ready.Ready {
			t.Fatalf("/readyz = %+v, want ready", ready)
		}
		for _, s := range sources {
			up[s.Name] = s.Up
		}
	}
	port, retrans := sendTo(t, a, b, 100_000)
	var rec *struct{ fwd, back uint64 }
	deadline = time.Now().Add(5 * time.Second)
	for rec == nil && time.Now().Before(deadline) {
		var doc server.FlowsDoc
		if err := json.Unmarshal([]byte(p.get(t, "/api/v1/flows?last=12")), &doc); err != nil {
			t.Fatalf("decode /api/v1/flows: %v", err)
		}
		if doc.Version != server.FlowsVersion {
			t.Errorf("version = %d, want %d", doc.Version, server.FlowsVersion)
		}
		for _, r := range doc.Flows {
			if r.Src == a.Addr && r.Dst == b.Addr && r.DstPort == port {
				rec = &struct{ fwd, back uint64 }{r.Forward.Bytes, r.Reverse.Bytes}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if rec == nil {
		t.Fatalf("flow %s → %s:%d not in /api/v1/flows after 5s", a.Addr, b.Addr, port)
	}
	if rec.fwd < 100_000 || rec.fwd > 110_000+retrans {
		t.Errorf("flow bytes = %d, want 100000 of payload plus headers (and %d retransmitted)", rec.fwd, retrans)
	}
	metrics := p.get(t, "/metrics")
	for _, want := range []string{"flowmap_attached_interfaces 2", "flowmap_watched_bridges 1", "flowmap_flow_map_capacity 65536", "flowmap_drain_duration_seconds_count", "flowmap_flow_map_full_packets_total 0", `flowmap_store_limit_bytes{store="api_history"} 2.5165824e+07`, `flowmap_store_bytes{store="graph"}`} {
		if !strings.Contains(metrics, want+"\n") && !strings.Contains(metrics, want+" ") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	check := exec.Command(testenv.MustHaveCommand(t, "promtool"), "check", "metrics")
	check.Stdin = strings.NewReader(metrics)
	if out, err := check.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	if err := p.stop(t, syscall.SIGTERM); err != nil {
		t.Errorf("agent exit after SIGTERM: %v, want 0", err)
	}
	for _, h := range []*sandbox.Host{a, b} {
		if n := testenv.TCXPrograms(t, h.HostIfIndex); n != 0 {
			t.Errorf("%s: %d TCX programs left after SIGTERM", h.HostIf, n)
		}
	}
}

// TestAgentRestartAfterKill: clsact filters outlive a killed agent; the
// next agent removes them, and SIGTERM leaves no filter or qdisc.
func TestAgentRestartAfterKill(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	testenv.MustHaveCommand(t, "go")
	if err := sandbox.Cleanup("fmk"); err != nil {
		t.Fatal(err)
	}
	sb := sandboxtest.New(t, sandbox.Options{Prefix: "fmk", Subnet: cmdSubnet})
	a := addHost(t, sb, "a")
	bin := buildFlowmap(t)

	p := startAgent(t, bin, "--interfaces", "fmk-*", "--attach", "clsact")
	if n := testenv.ClsactFilters(t, a.HostIfIndex); n != 2 {
		t.Fatalf("%d clsact filters on %s, want 2", n, a.HostIf)
	}
	p.stop(t, syscall.SIGKILL)
	if n := testenv.ClsactFilters(t, a.HostIfIndex); n != 2 {
		t.Fatalf("%d clsact filters on %s after SIGKILL, want the dead agent's 2", n, a.HostIf)
	}

	p = startAgent(t, bin, "--interfaces", "fmk-*", "--attach", "clsact")
	if n := testenv.ClsactFilters(t, a.HostIfIndex); n != 2 {
		t.Errorf("%d clsact filters on %s after restart, want 2 (the dead agent's removed)", n, a.HostIf)
	}
	if err := p.stop(t, syscall.SIGTERM); err != nil {
		t.Errorf("agent exit after SIGTERM: %v, want 0", err)
	}
	if n := testenv.ClsactFilters(t, a.HostIfIndex); n != 0 {
		t.Errorf("%d clsact filters on %s after SIGTERM, want 0", n, a.HostIf)
	}
	if testenv.HasClsact(t, a.HostIfIndex) {
		t.Errorf("clsact qdisc left on %s after SIGTERM", a.HostIf)
	}
}

// TestAgentNotRoot: without the privileges to load BPF programs the agent
// says what it lacks.
func TestAgentNotRoot(t *testing.T) {
	testenv.MustBeRoot(t) // to drop to nobody
	testenv.MustHaveCommand(t, "go")
	// t.TempDir's parent is closed to other users: copy the binary out.
	dir, err := os.MkdirTemp("", "flowmap-nobody")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "flowmap")
	if out, err := exec.Command("cp", buildFlowmap(t), bin).CombinedOutput(); err != nil {
		t.Fatalf("copy binary: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "agent", "--listen", freePort(t))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("agent as nobody exited 0, want an error\n%s", out)
	}
	if want := "run as root or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"; !strings.Contains(string(out), want) {
		t.Errorf("agent as nobody said %q, want it to say %q", out, want)
	}
}

func TestAgentFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"attach", []string{"agent", "--attach", "bogus"}, `attach mode "bogus"`},
		{"interval", []string{"agent", "--interval", "1ms"}, "--interval=1ms"},
		{"extra", []string{"agent", "extra"}, `unexpected argument "extra"`},
		{"export-otlp", []string{"agent", "--export-otlp", "udp://collector:4317"}, `--export-otlp: parse otlp url`},
		{"export-otlp-compression", []string{"agent", "--export-otlp", "grpc://collector:4317", "--export-otlp-compression", "zstd"},
			`--export-otlp-compression: otlp compression "zstd"`},
		{"export-ipfix", []string{"agent", "--export-ipfix", "collector:4739"}, `--export-ipfix: parse ipfix url`},
		{"export-ports", []string{"agent", "--export-ports", "sctp/1"}, `--export-ports: parse port "sctp/1"`},
		{"export-sample", []string{"agent", "--export-sample", "0"}, `--export-sample=0`},
		{"command", []string{"nope"}, `unknown command "nope"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := run(t.Context(), tc.args, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("run(%q) = %v, want an error with %q", tc.args, err, tc.want)
			}
		})
	}
}

func addHost(t *testing.T, sb *sandbox.Net, name string) *sandbox.Host {
	t.Helper()
	h, err := sb.AddHost(name)
	if err != nil {
		t.Fatalf("add host %s: %v", name, err)
	}
	return h
}

// sendTo sends n bytes from a to a listener on b and returns its port and
// the bytes TCP retransmitted.
func sendTo(t *testing.T, a, b *sandbox.Host, n int) (uint16, uint64) {
	t.Helper()
	ln, err := b.Listen("tcp4", net.JoinHostPort(b.Addr.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err == nil {
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	c, err := a.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	<-done
	retrans := testenv.TCPRetransmitted(c.(*net.TCPConn))
	c.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port), retrans
}

// readDaemonSet decodes deploy/kubernetes/daemonset.yaml.
func readDaemonSet(t *testing.T) appsv1.DaemonSet {
	t.Helper()
	b, err := os.ReadFile("../../deploy/kubernetes/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	if err := yaml.UnmarshalStrict(b, &ds); err != nil {
		t.Fatalf("decode daemonset.yaml: %v", err)
	}
	return ds
}

// TestDaemonSetArgs: the DaemonSet runs the agent with flags it has.
func TestDaemonSetArgs(t *testing.T) {
	ds := readDaemonSet(t)
	cs := ds.Spec.Template.Spec.Containers
	if len(cs) != 1 || len(cs[0].Args) == 0 || cs[0].Args[0] != "agent" {
		t.Fatalf("containers = %+v, want one running the agent", cs)
	}
	// $(VAR) is the kubelet's: any value of the right form will do, of
	// either family ($(POD_IP) is an IPv6 address on an IPv6 cluster).
	for _, ip := range []string{"198.51.100.10", "fd00::a"} {
		fs := flag.NewFlagSet("agent", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		var a agentFlags
		a.register(fs)
		args := strings.NewReplacer("$(POD_IP)", ip, "$(NODE_NAME)", "n1").Replace(strings.Join(cs[0].Args[1:], "\n"))
		if err := fs.Parse(strings.Split(args, "\n")); err != nil {
			t.Errorf("the DaemonSet's agent args %q with POD_IP=%s: %v", cs[0].Args[1:], ip, err)
			continue
		}
		if want := net.JoinHostPort(ip, "9477"); a.listen != want {
			t.Errorf("POD_IP=%s: listen %q, want %q", ip, a.listen, want)
		}
		// Beyond loopback: TLS and Kubernetes authentication.
		if a.serve.tlsCert == "" || a.serve.tlsKey == "" || a.serve.auth != "kubernetes" || !a.inv.cfg.KubeInCluster {
			t.Errorf("POD_IP=%s: tls %q, %q, auth %q, in cluster %v; want TLS and --auth=kubernetes with --kube-in-cluster",
				ip, a.serve.tlsCert, a.serve.tlsKey, a.serve.auth, a.inv.cfg.KubeInCluster)
		}
	}
}
