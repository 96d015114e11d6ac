package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"

	"github.com/flowmap/flowmap/internal/sandboxtest"
	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/sandbox"
	"github.com/flowmap/flowmap/server"
)

// TestAgentCapabilities runs the agent binary as root with exactly the
// capabilities deploy/kubernetes's DaemonSet adds (capsh drops every other
// from the bounding set, so the binary gets those alone): it counts a flow
// on a sandbox, and the netns source names both ends. Without each of
// them it exits at once with an error naming the one missing.
func TestAgentCapabilities(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	testenv.MustHaveCommand(t, "go")
	capsh := testenv.MustHaveCommand(t, "capsh") // Debian's libcap2-bin
	keep := daemonSetCaps(t)
	all := boundingSet(t, capsh)
	for _, c := range keep {
		if !slices.Contains(all, c) {
			t.Fatalf("the DaemonSet's %s is not in this process's bounding set %v", c, all)
		}
	}
	bin := buildFlowmap(t)
	// under runs the binary with the capabilities in keep, less without.
	under := func(without string) []string {
		var drop []string
		for _, c := range all {
			if !slices.Contains(keep, c) || c == without {
				drop = append(drop, c)
			}
		}
		return []string{capsh, "--drop=" + strings.Join(drop, ","), "--shell=" + bin, "--"}
	}

	for _, c := range keep {
		t.Run("without "+c, func(t *testing.T) {
			u := under(c)
			cmd := exec.Command(u[0], append(u[1:], "agent", "--listen", freePort(t), "--interfaces", "fmcap-*")...)
			done := make(chan struct{})
			defer close(done)
			go func() {
				select {
				case <-done:
				case <-time.After(20 * time.Second):
					cmd.Process.Kill()
				}
			}()
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("agent without %s exited 0, want an error naming it\n%s", c, out)
			}
			if want := strings.ToUpper(c) + " missing"; !strings.Contains(string(out), want) {
				t.Errorf("agent without %s said:\n%s\nwant it to say %q", c, out, want)
			}
		})
	}

	if err := sandbox.Cleanup("fmcap"); err != nil {
		t.Fatal(err)
	}
	sb := sandboxtest.New(t, sandbox.Options{Prefix: "fmcap", Subnet: cmdSubnet})
	a, b := addHost(t, sb, "a"), addHost(t, sb, "b")
	p := startAgentUnder(t, under(""), "--interfaces", "fmcap-*")
	port, _ := sendTo(t, a, b, 10_000)
	deadline := time.Now().Add(10 * time.Second)
	for {
		var doc server.FlowsDoc
		if err := json.Unmarshal([]byte(p.get(t, "/api/v1/flows?last=12")), &doc); err != nil {
			t.Fatalf("decode /api/v1/flows: %v", err)
		}
		found := slices.ContainsFunc(doc.Flows, func(r model.Record) bool {
			return r.Src == a.Addr && r.Dst == b.Addr && r.DstPort == port && r.Forward.Bytes >= 10_000
		})
		graph := p.get(t, "/api/v1/graph")
		if found && strings.Contains(graph, `"`+a.NetNS+`"`) && strings.Contains(graph, `"`+b.NetNS+`"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: flow %s → %s:%d counted: %v; graph names %s and %s: %v\n%s", a.Addr, b.Addr, port, found,
				a.NetNS, b.NetNS, strings.Contains(graph, a.NetNS) && strings.Contains(graph, b.NetNS), graph)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// daemonSetCaps returns the capabilities deploy/kubernetes's agent
// container adds, as capsh names them (cap_bpf).
func daemonSetCaps(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../../deploy/kubernetes/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	if err := yaml.Unmarshal(b, &ds); err != nil {
		t.Fatalf("decode daemonset.yaml: %v", err)
	}
	for _, c := range ds.Spec.Template.Spec.Containers {
		if c.Name != "agent" {
			continue
		}
		sc := c.SecurityContext
		if sc == nil || sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			t.Fatalf("daemonset.yaml's agent does not drop ALL capabilities: %+v", sc)
		}
		var out []string
		for _, c := range sc.Capabilities.Add {
			out = append(out, "cap_"+strings.ToLower(string(c)))
		}
		return out
	}
	t.Fatal("daemonset.yaml has no agent container")
	return nil
}

// boundingSet returns the capabilities in this process's bounding set, as
// capsh --print lists them.
func boundingSet(t *testing.T, capsh string) []string {
	t.Helper()
	out, err := exec.Command(capsh, "--print").CombinedOutput()
	if err != nil {
		t.Fatalf("capsh --print: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, "Bounding set ="); ok {
			return strings.Split(strings.TrimSpace(rest), ",")
		}
	}
	t.Fatalf("capsh --print has no bounding set:\n%s", out)
	return nil
}
