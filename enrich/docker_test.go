package enrich_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/flowmap/flowmap/enrich"
	"github.com/flowmap/flowmap/flows"
	"github.com/flowmap/flowmap/internal/dockertest"
	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
)

// container is a container the test started, as the engine reports it.
type container struct {
	name   string
	id     string
	image  string
	addr   netip.Addr
	labels map[string]string
}

// engine is a container engine under test: Docker or Podman.
type engine struct {
	cli     func(ctx context.Context, args ...string) (string, error)
	runArgs []string // for docker run, as the network
	rm      []string // the command that removes a running container at once
	subnet  netip.Prefix
}

func runContainer(t *testing.T, e engine, image, name string, labels map[string]string, cmd ...string) container {
	t.Helper()
	ctx := context.Background()
	args := append([]string{"run", "-d", "--name", name}, e.runArgs...)
	for k, v := range labels {
		args = append(args, "--label", k+"="+v)
	}
	args = append(append(args, image), cmd...)
	id, err := e.cli(ctx, args...)
	if err != nil {
		t.Fatalf("start container %s: %v", name, err)
	}
	out, err := e.cli(ctx, "inspect", "--format", "{{.Config.Image}} {{json .NetworkSettings.Networks}}", id)
	if err != nil {
		t.Fatalf("inspect %s: %v", name, err)
	}
	img, out, _ := strings.Cut(out, " ")
	var nets map[string]struct{ IPAddress string }
	if err := json.Unmarshal([]byte(out), &nets); err != nil {
		t.Fatalf("inspect %s: %v", name, err)
	}
	c := container{name: name, id: id, image: img, labels: labels}
	for _, n := range nets {
		if a, err := netip.ParseAddr(n.IPAddress); err == nil {
			c.addr = a
		}
	}
	if !c.addr.IsValid() || !e.subnet.Contains(c.addr) {
		t.Fatalf("container %s has address %v, want one in %v", name, c.addr, e.subnet)
	}
	return c
}

// checkNamed fails t unless ep is c as the Docker API names it: by name,
// image and labels.
func checkNamed(t *testing.T, what string, ep model.Endpoint, c container) {
	t.Helper()
	if ep.Kind != model.KindContainer || ep.ID != c.id || ep.Name != c.name || ep.Image != c.image || c.image == "" {
		t.Errorf("%s = %s %q name %q image %q, want container %q name %q image %q", what, ep.Kind, ep.ID, ep.Name, ep.Image, c.id, c.name, c.image)
	}
	for k, v := range c.labels {
		if ep.Labels[k] != v {
			t.Errorf("%s label %q = %q, want %q (labels %v)", what, k, ep.Labels[k], v, ep.Labels)
		}
	}
	if ep.NetNS == 0 {
		t.Errorf("%s has no network namespace", what)
	}
}

// checkByID fails t unless ep is c as the netns source names it without
// the engine: kind, full id and the short id as name.
func checkByID(t *testing.T, what string, ep model.Endpoint, c container) {
	t.Helper()
	if ep.Kind != model.KindContainer || ep.ID != c.id || ep.Name != c.id[:12] || ep.Source != "netns" {
		t.Errorf("%s = %s %q name %q from %q, want container %q name %q from netns", what, ep.Kind, ep.ID, ep.Name, ep.Source, c.id, c.id[:12])
	}
}

// waitFlow reads batches until one has a flow from src to dst:port
// counted at the sender's veth: the steady state. (While the datapath
// attaches to a bridge's ports at start, a packet may be counted at the
// receiver's veth instead, with no SrcIf.)
func waitFlow(t *testing.T, batches <-chan model.Batch, src, dst netip.Addr, port uint16, limit time.Duration) model.Record {
	t.Helper()
	return waitFlowSince(t, batches, src, dst, port, time.Time{}, limit)
}

// waitFlowSince is waitFlow for a flow first seen after since: not one of
// containers that had the addresses before.
func waitFlowSince(t *testing.T, batches <-chan model.Batch, src, dst netip.Addr, port uint16, since time.Time, limit time.Duration) model.Record {
	t.Helper()
	deadline := time.After(limit)
	for {
		select {
		case b := <-batches:
			for _, r := range b.Records {
				if r.Src == src && r.Dst == dst && r.DstPort == port && r.Proto == model.ProtoTCP && r.SrcIf.Index != 0 && r.FirstSeen.After(since) {
					return r
				}
			}
		case <-deadline:
			t.Fatalf("no flow %v → %v:%d within %v", src, dst, port, limit)
		}
	}
}

// waitNamed resolves addr until check accepts it, and returns how long it
// took.
func waitNamed(t *testing.T, inv *enrich.Inventory, addr netip.Addr, limit time.Duration, ok func(model.Endpoint) bool) (model.Endpoint, time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		ep := inv.Resolve(addr, model.Interface{})
		if ok(ep) {
			return ep, time.Since(start)
		}
		if time.Since(start) > limit {
			return ep, time.Since(start)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitRelisted waits until the inventory's source name is up and has
// listed its runtime since since, for 20 s at the most, and returns how
// long after since that was.
func waitRelisted(t *testing.T, inv *enrich.Inventory, name string, since time.Time) time.Duration {
	t.Helper()
	for {
		var st enrich.SourceStatus
		for _, s := range inv.Status() {
			if s.Name == name {
				st = s
			}
		}
		if st.Up && st.LastSync.After(since) {
			took := time.Since(since)
			t.Logf("the %s source listed its runtime again %v after it answered", name, took)
			return took
		}
		if time.Since(since) > 20*time.Second {
			t.Fatalf("the %s source did not list its runtime again within 20s of its return: %+v", name, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// TestDocker runs a real dockerd with two busybox containers, one fetching
// from the other, watches their bridge with the real datapath, and checks
// that the inventory names both ends of the flow by container name, image
// and labels, and a container started while it runs within 2s; then, with
// the engine's socket gone, that the netns source still names them.
func TestDocker(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	testenv.MustHaveCommand(t, "busybox")
	d := dockertest.StartT(t, dockertest.Options{Prefix: "fme"})
	ctx := context.Background()
	image, err := d.ImportBusybox(ctx, "fme-busybox:1")
	if err != nil {
		t.Fatalf("import busybox: %v", err)
	}
	e := engine{cli: d.Docker, rm: []string{"rm", "-f"}, subnet: d.Subnet}
	srv := runContainer(t, e, image, "fme-srv", map[string]string{"tier": "db", "flowmap.test": "server"},
		"httpd", "-f", "-p", "8080", "-h", "/www")
	cli := runContainer(t, e, image, "fme-cli", map[string]string{"tier": "web"},
		"sh", "-c", "while true; do wget -q -O /dev/null http://"+srv.addr.String()+":8080/; sleep 0.2; done")

	batches := watchBridge(t, d.Bridge)

	t.Run("engine", func(t *testing.T) {
		testEngineNames(t, e, enrich.Config{NetNS: true, DockerSocket: d.AgentSocket, Logger: testLogger(t)}, batches, image, cli, srv)
	})

	t.Run("socket gone", func(t *testing.T) {
		if err := os.Remove(d.AgentSocket); err != nil {
			t.Fatalf("remove the agent's socket: %v", err)
		}
		inv := startInventory(t, enrich.Config{NetNS: true, DockerSocket: d.AgentSocket, Logger: testLogger(t)})
		r := waitFlow(t, batches, cli.addr, srv.addr, 8080, 20*time.Second)
		// The netns source syncs at start; give the merge a moment.
		waitNamed(t, inv, srv.addr, 2*time.Second, func(ep model.Endpoint) bool { return ep.Kind == model.KindContainer })
		f := inv.Enrich(r)
		checkByID(t, "source", f.SrcEndpoint, cli)
		checkByID(t, "destination", f.DstEndpoint, srv)

		start := time.Now()
		late := runContainer(t, e, image, "fme-late2", nil, "sleep", "3600")
		ep, _ := waitNamed(t, inv, late.addr, 2*time.Second, func(ep model.Endpoint) bool { return ep.ID == late.id })
		took := time.Since(start)
		t.Logf("without the engine, container started while running named %v after run began", took)
		if took > 2*time.Second {
			t.Errorf("container started while running named after %v, want within 2s", took)
		}
		checkByID(t, "late container", ep, late)

		var docker enrich.SourceStatus
		for _, st := range inv.Status() {
			if st.Name == "docker" {
				docker = st
			}
		}
		if docker.Up || !strings.Contains(docker.LastError, "agent.sock") {
			t.Errorf("docker source: up %v, last error %q, want down with the socket in the error", docker.Up, docker.LastError)
		}
	})

	// Last: the restart stops the containers above. It also brings back
	// the socket the subtest before removed.
	t.Run("engine restarted", func(t *testing.T) {
		inv := startInventory(t, enrich.Config{NetNS: true, DockerSocket: d.AgentSocket, Logger: testLogger(t)})
		if err := d.Restart(ctx); err != nil {
			t.Fatalf("restart dockerd: %v", err)
		}
		back := time.Now()
		// The inventory lists the engine again within its longest back-off
		// (2 s) of the engine's return, however long it was away.
		if took, limit := waitRelisted(t, inv, "docker", back), 3*time.Second; took > limit {
			t.Errorf("the docker source listed the engine again %v after it answered, want within %v", took, limit)
		}
		// The containers were stopped with the engine, and had no restart
		// policy: their addresses are no one's now.
		for _, c := range []container{cli, srv} {
			if ep, took := waitNamed(t, inv, c.addr, 10*time.Second, func(ep model.Endpoint) bool { return ep.Kind == model.KindExternal }); ep.Kind != model.KindExternal {
				t.Errorf("stopped container %s's address resolves to %s %q after %v, want external", c.name, ep.Kind, ep.Name, took)
			}
		}
		started := time.Now()
		srv2 := runContainer(t, e, image, "fme-srv2", map[string]string{"after": "restart"}, "httpd", "-f", "-p", "8080", "-h", "/www")
		cli2 := runContainer(t, e, image, "fme-cli2", nil,
			"sh", "-c", "while true; do wget -q -O /dev/null http://"+srv2.addr.String()+":8080/; sleep 0.2; done")
		// Named by the engine again: within the longest back-off of the
		// inventory's retries (2 s) and the 2 s a live start is named in.
		ep, took := waitNamed(t, inv, srv2.addr, 10*time.Second, func(ep model.Endpoint) bool { return ep.Name == srv2.name })
		t.Logf("container started after the engine came back named %v after it started, %v after the engine answered", took, time.Since(back))
		checkNamed(t, "container started after the restart", ep, srv2)
		if limit := 4 * time.Second; took > limit {
			t.Errorf("container started after the restart named %v after it started, want within %v", took, limit)
		}
		// Counts resume: the new containers' veths are watched and their
		// flow named at both ends. The old containers had the same
		// addresses: their last flows, drained since, are theirs (a flow
		// is named by who held its addresses when it was seen).
		r := waitFlowSince(t, batches, cli2.addr, srv2.addr, 8080, started, 20*time.Second)
		f := inv.Enrich(r)
		checkNamed(t, "source after the restart", f.SrcEndpoint, cli2)
		checkNamed(t, "destination after the restart", f.DstEndpoint, srv2)
		for _, st := range inv.Status() {
			if st.Name == "docker" && !st.Up {
				t.Errorf("docker source down after the engine came back: %s", st.LastError)
			}
		}
	})
}

// testEngineNames checks that an inventory of cfg names both ends of the
// flow from cli to srv by container name, image and labels, a container
// started while it runs within 2s, and forgets a removed one.
func testEngineNames(t *testing.T, e engine, cfg enrich.Config, batches <-chan model.Batch, image string, cli, srv container) {
	t.Helper()
	ctx := context.Background()
	inv := startInventory(t, cfg)
	r := waitFlow(t, batches, cli.addr, srv.addr, 8080, 20*time.Second)
	f := inv.Enrich(r)
	checkNamed(t, "source", f.SrcEndpoint, cli)
	checkNamed(t, "destination", f.DstEndpoint, srv)
	if r.SrcIf.Index == 0 || r.SrcIf.PeerNetNSID < 0 {
		t.Errorf("flow counted with SrcIf %+v, want the client's veth", r.SrcIf)
	}

	start := time.Now()
	late := runContainer(t, e, image, "fme-late", map[string]string{"late": "yes"}, "sleep", "3600")
	ep, _ := waitNamed(t, inv, late.addr, 2*time.Second, func(ep model.Endpoint) bool { return ep.Name == late.name })
	// From before docker run: the engine's own start time included.
	took := time.Since(start)
	t.Logf("container started while running named %v after run began", took)
	if took > 2*time.Second {
		t.Errorf("container started while running named after %v, want within 2s", took)
	}
	checkNamed(t, "late container", ep, late)
	start = time.Now()
	if _, err := e.cli(ctx, append(e.rm, late.name)...); err != nil {
		t.Fatalf("remove late container: %v", err)
	}
	waitNamed(t, inv, late.addr, 2*time.Second, func(ep model.Endpoint) bool { return ep.Kind == model.KindExternal })
	if ep := inv.Resolve(late.addr, model.Interface{}); ep.Kind != model.KindExternal {
		t.Errorf("removed container's address resolves to %s %q, want external", ep.Kind, ep.Name)
	} else {
		t.Logf("removed container forgotten %v after rm began", time.Since(start))
	}
	for _, st := range inv.Status() {
		if !st.Up || st.LastSync.IsZero() {
			t.Errorf("source %s: up %v, last sync %v, want up and synced (%s)", st.Name, st.Up, st.LastSync, st.LastError)
		}
	}
}

// watchBridge runs the datapath on the ports of bridge until the test
// ends, and returns its batches.
func watchBridge(t *testing.T, bridge string) <-chan model.Batch {
	t.Helper()
	dp, err := flows.New(flows.Config{Interfaces: []string{bridge}, Interval: 500 * time.Millisecond})
	if err != nil {
		t.Fatalf("flows.New: %v", err)
	}
	t.Cleanup(func() { dp.Close() })
	ctx, stop := context.WithCancel(context.Background())
	batches := make(chan model.Batch, 16)
	done := make(chan error, 1)
	go func() { done <- dp.Run(ctx, batches) }()
	t.Cleanup(func() { stop(); <-done })
	return batches
}

// startInventory runs an inventory of cfg until the test ends.
func startInventory(t *testing.T, cfg enrich.Config) *enrich.Inventory {
	t.Helper()
	inv, err := enrich.New(cfg)
	if err != nil {
		t.Fatalf("enrich.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- inv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("inventory did not stop within 10s")
		}
	})
	return inv
}
