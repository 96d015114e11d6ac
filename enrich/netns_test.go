package enrich_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowmap/flowmap/enrich"
	"github.com/flowmap/flowmap/internal/sandboxtest"
	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/sandbox"
)

// TestNetNS checks the netns source without any runtime: namespaces made
// by `ip netns add` (a sandbox) are named by their names, a flow between
// them seen by the datapath is named at both ends, and a process in one of
// them whose cgroup path has no container id is logged and counted, while
// the namespace is still named.
func TestNetNS(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	testenv.MustHaveCommand(t, "ip")
	sb := sandboxtest.New(t, sandbox.Options{Prefix: "fmen", Subnet: netip.MustParsePrefix("198.51.100.224/28")})
	a, err := sb.AddHost("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := sb.AddHost("b")
	if err != nil {
		t.Fatal(err)
	}
	// A process in b, in a cgroup of a form no runtime makes.
	cg := unknownCgroup(t)
	sleeper := b.Command(context.Background(), "sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatalf("start sleep in %s: %v", b.NetNS, err)
	}
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(sleeper.Process.Pid)), 0o644); err != nil {
		t.Fatalf("move sleep to %s: %v", cg, err)
	}

	batches := watchBridge(t, sb.BridgeName())
	inv := startInventory(t, enrich.Config{NetNS: true, Logger: testLogger(t)})

	l, err := b.Listen("tcp", b.Addr.String()+":9000")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	// Connect again and again: the datapath attaches while Run starts,
	// and a packet sent before that is not counted.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			if c, err := a.Dial("tcp", b.Addr.String()+":9000"); err == nil {
				fmt.Fprint(c, "hello")
				c.Close()
			}
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()

	r := waitFlow(t, batches, a.Addr, b.Addr, 9000, 10*time.Second)
	waitNamed(t, inv, b.Addr, 2*time.Second, func(ep model.Endpoint) bool { return ep.Name == b.NetNS })
	f := inv.Enrich(r)
	for _, c := range []struct {
		what string
		ep   model.Endpoint
		h    *sandbox.Host
	}{{"source", f.SrcEndpoint, a}, {"destination", f.DstEndpoint, b}} {
		if c.ep.Kind != model.KindNetNS || c.ep.Name != c.h.NetNS || c.ep.NetNS != c.h.NetNSInode || c.ep.Source != "netns" {
			t.Errorf("%s = %s %q netns %d from %q, want netns %q (%d) from netns", c.what, c.ep.Kind, c.ep.Name, c.ep.NetNS, c.ep.Source, c.h.NetNS, c.h.NetNSInode)
		}
	}
	if f.DstEndpoint.PIDNS == 0 {
		t.Errorf("destination has no PID namespace, want that of its sleep")
	}
	if n := errorCount(t, inv, "netns", "cgroup_unknown"); n < 1 {
		t.Errorf("netns cgroup_unknown errors = %v, want at least 1", n)
	}
}

// unknownCgroup makes a cgroup on the first cgroup hierarchy mounted (the
// v2 one, or a v1 one) and removes it when the test ends.
func unknownCgroup(t *testing.T) string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var root string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// … mount-point … - fstype source options
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && (fields[i+1] == "cgroup2" || fields[i+1] == "cgroup") {
				root = fields[4]
			}
		}
		if root != "" {
			break
		}
	}
	if root == "" {
		t.Fatal("test needs a cgroup hierarchy mounted")
	}
	dir := filepath.Join(root, fmt.Sprintf("fme-unknown-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("make cgroup: %v", err)
	}
	t.Cleanup(func() {
		// The cgroup is empty once its process is reaped.
		for range 50 {
			if err := os.Remove(dir); err == nil {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Errorf("remove cgroup %s: still busy", dir)
	})
	return dir
}
