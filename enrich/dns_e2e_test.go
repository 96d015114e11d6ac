package enrich_test

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/flowmap/flowmap/enrich"
	"github.com/flowmap/flowmap/flows"
	"github.com/flowmap/flowmap/internal/sandboxtest"
	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/sandbox"
)

// TestDNSNamesEndToEnd runs a real DNS server (dnsmasq) in a sandbox, looks
// a name up from another host, then connects to the address it gave: the
// names the datapath's batches carry, fed to a Names cache as the agent's
// pipeline does, name that flow's server by the name looked up, and leave
// the DNS server, which no answer named, as it was.
func TestDNSNamesEndToEnd(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	testenv.MustHaveCommand(t, "dnsmasq")
	if err := sandbox.Cleanup("fmed"); err != nil {
		t.Fatalf("remove leftovers: %v", err)
	}
	// This package's tests run one after another: TestNetNS's subnet.
	sb := sandboxtest.New(t, sandbox.Options{Prefix: "fmed", Subnet: netip.MustParsePrefix("198.51.100.224/28")})
	var hosts []*sandbox.Host
	for _, name := range []string{"a", "d", "w"} {
		h, err := sb.AddHost(name)
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, h)
	}
	a, d, w := hosts[0], hosts[1], hosts[2]
	const name = "web.shop.example"
	server := sandboxtest.StartDNSMasq(t, d, map[string]netip.Addr{name: w.Addr})
	batches := runDatapath(t, sb.BridgeName())

	res := a.Resolver(server)
	got, err := res.LookupNetIP(context.Background(), "ip4", name+".")
	if err != nil || len(got) != 1 || got[0] != w.Addr {
		t.Fatalf("look up %s = %v, %v; want [%s]", name, got, err, w.Addr)
	}
	if _, err := res.LookupNetIP(context.Background(), "ip4", "nope.shop.example."); err == nil {
		t.Fatalf("look up nope.shop.example: no error, want NXDOMAIN")
	}

	l, err := w.Listen("tcp4", w.Addr.String()+":8080")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	c, err := a.Dial("tcp4", netip.AddrPortFrom(got[0], 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(c, "hello")
	c.Close()

	// As the agent's pipeline does: a batch's names first, then its flows
	// named by address alone and by the names.
	names := enrich.NewNames(0)
	byAddr := func(a netip.Addr) model.Endpoint {
		return model.Endpoint{Kind: model.KindUnknown, ID: a.String(), Name: a.String()}
	}
	var web, dns *model.Flow
	deadline := time.After(10 * time.Second)
	for web == nil || dns == nil {
		var b model.Batch
		select {
		case b = <-batches:
		case <-deadline:
			t.Fatalf("no flows %s → %s:8080 and → %s:53 after 10s", a.Addr, w.Addr, d.Addr)
		}
		for _, n := range b.Names {
			names.Add(n, b.End)
		}
		for _, r := range b.Records {
			f := model.Flow{Record: r, SrcEndpoint: byAddr(r.Src), DstEndpoint: byAddr(r.Dst)}
			names.Name(&f.SrcEndpoint, f.Src, b.End)
			names.Name(&f.DstEndpoint, f.Dst, b.End)
			switch {
			case r.Src == a.Addr && r.Dst == w.Addr && r.DstPort == 8080:
				web = &f
			case r.Src == a.Addr && r.Dst == d.Addr && r.DstPort == 53:
				dns = &f
			}
		}
	}
	if ep := web.DstEndpoint; ep.Kind != model.KindExternal || ep.Name != name || ep.Source != "dns" || ep.ID != w.Addr.String() {
		t.Errorf("web server = %s %q (id %s) from %q, want %s %q (id %s) from dns", ep.Kind, ep.Name, ep.ID, ep.Source, model.KindExternal, name, w.Addr)
	}
	for _, c := range []struct {
		what string
		ep   model.Endpoint
		addr netip.Addr
	}{{"web client", web.SrcEndpoint, a.Addr}, {"dns server", dns.DstEndpoint, d.Addr}} {
		if want := byAddr(c.addr); c.ep.Kind != want.Kind || c.ep.Name != want.Name || c.ep.Source != "" {
			t.Errorf("%s = %s %q from %q, want %s %q: no answer named it", c.what, c.ep.Kind, c.ep.Name, c.ep.Source, want.Kind, want.Name)
		}
	}
	if st := names.Stats(); st.Added != 1 {
		t.Errorf("names added = %d, want 1 (one answer; NXDOMAIN gives none)", st.Added)
	}
}

// runDatapath runs the datapath on a bridge's ports until the test ends,
// and returns its batches once it has attached: a packet sent before is
// not counted.
func runDatapath(t *testing.T, bridge string) <-chan model.Batch {
	t.Helper()
	dp, err := flows.New(flows.Config{Interfaces: []string{bridge}, Interval: 300 * time.Millisecond})
	if err != nil {
		t.Fatalf("flows.New: %v", err)
	}
	t.Cleanup(func() { dp.Close() })
	ctx, stop := context.WithCancel(context.Background())
	batches := make(chan model.Batch, 64)
	done := make(chan error, 1)
	go func() { done <- dp.Run(ctx, batches) }()
	t.Cleanup(func() { stop(); <-done })
	deadline := time.Now().Add(5 * time.Second)
	for dp.Ready() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("datapath not ready after 5s: %v", dp.Ready())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return batches
}
