package testenv

import (
	"net"
	"net/netip"
	"testing"
)

// HostAddr returns an IPv4 address of this machine that is not loopback, to
// listen on as the agent does on a node's address: the first global unicast
// address of the first interface that is up (the lowest index, so the
// machine's own NIC rather than a link a test made). Nothing is sent off the
// machine: the test's client dials its own address. It fails the test if
// the machine has none.
func HostAddr(t testing.TB) netip.Addr {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() && p.Addr().IsGlobalUnicast() {
				return p.Addr()
			}
		}
	}
	t.Fatal("this machine has no non-loopback IPv4 address to listen on: the test needs one")
	return netip.Addr{}
}
