package cluster

import (
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/flowmap/flowmap/internal/testenv"
)

// TestCluster builds two nodes and an outside client, and checks that each
// pod reaches the other through two nodes, and the outside reaches both,
// without NAT.
func TestCluster(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveCommand(t, "ip")
	// Free of cmd/flowmap's cluster test, which has the defaults.
	c := NewT(t, Options{Prefix: "fmkc", Nodes: []int{1, 1}, Outside: true,
		Underlay: netip.MustParsePrefix("198.51.100.112/29"), Pods: netip.MustParsePrefix("198.51.100.56/29"), PodBits: 30})
	var pods []*Pod
	for _, n := range c.Nodes {
		pods = append(pods, n.Pods...)
	}
	if got, want := len(pods), 2; got != want {
		t.Fatalf("%d pods, want %d", got, want)
	}
	for _, dst := range pods {
		ln, err := dst.Listen("tcp4", dst.Addr.String()+":7000")
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				io.WriteString(c, c.RemoteAddr().String())
				c.Close()
			}
		}()
		clients := []*NS{c.Out}
		for _, p := range pods {
			if p != dst {
				clients = append(clients, &p.NS)
			}
		}
		for _, src := range clients {
			conn, err := src.Dial("tcp4", dst.Addr.String()+":7000")
			if err != nil {
				t.Errorf("%s → %s: %v", src.Name, dst.Name, err)
				continue
			}
			b, _ := io.ReadAll(conn)
			conn.Close()
			// No NAT on the way: the server sees the client's own address.
			if host, _, _ := net.SplitHostPort(string(b)); host != src.Addr.String() {
				t.Errorf("%s → %s: server saw %q, want %s", src.Name, dst.Name, b, src.Addr)
			}
		}
		ln.Close()
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(out), "fmkc-") {
		t.Errorf("after Close, namespaces left: %s", out)
	}
	if exec.Command("ip", "link", "show", "fmkc-ul").Run() == nil {
		t.Error("after Close, the underlay bridge fmkc-ul is left")
	}
}
