package sandbox

import (
	"errors"
	"fmt"
	"net/netip"
)

// DefaultSubnet is the subnet of a Net whose Options leave Subnet unset.
var DefaultSubnet = netip.MustParsePrefix("198.51.100.0/24")

// docNets are the IPv4 documentation ranges (RFC 5737), the only addresses a
// sandbox hands out: private ranges may be in use on the machine, and real
// addresses would leave it.
var docNets = []netip.Prefix{
	netip.MustParsePrefix("192.0.2.0/24"),    // TEST-NET-1
	netip.MustParsePrefix("198.51.100.0/24"), // TEST-NET-2
	netip.MustParsePrefix("203.0.113.0/24"),  // TEST-NET-3
}

// ErrSubnetInUse is returned when a sandbox subnet overlaps an address
// already on the machine, as another sandbox's.
var ErrSubnetInUse = errors.New("subnet in use")

// checkSubnet returns an error unless p is an IPv4 subnet, without host bits,
// inside a documentation range, with room for a gateway and a host.
func checkSubnet(p netip.Prefix) error {
	switch {
	case !p.IsValid() || !p.Addr().Is4():
		return fmt.Errorf("subnet %s: not an IPv4 prefix", p)
	case p.Masked() != p:
		return fmt.Errorf("subnet %s: host bits set (want %s)", p, p.Masked())
	case p.Bits() > 30:
		return fmt.Errorf("subnet %s: no room for a gateway and a host (want /30 or shorter)", p)
	}
	for _, d := range docNets {
		if d.Bits() <= p.Bits() && d.Contains(p.Addr()) {
			return nil
		}
	}
	return fmt.Errorf("subnet %s: not inside a documentation range (%v)", p, docNets)
}

// gateway returns the first address of subnet, which the bridge takes.
func gateway(subnet netip.Prefix) netip.Addr {
	return subnet.Addr().Next()
}

// broadcast returns the last address of the IPv4 subnet.
func broadcast(subnet netip.Prefix) netip.Addr {
	b := subnet.Addr().As4()
	for i := subnet.Bits(); i < 32; i++ {
		b[i/8] |= 1 << (7 - i%8)
	}
	return netip.AddrFrom4(b)
}

// isHostAddr reports whether a can be a host's address in subnet: inside it,
// neither its network, gateway nor broadcast address.
func isHostAddr(subnet netip.Prefix, a netip.Addr) bool {
	return subnet.Contains(a) && a != subnet.Addr() && a != gateway(subnet) && a != broadcast(subnet)
}

// prefix6 returns the IPv6 /64 that mirrors the IPv4 subnet, so that one can be
// read off the other: the third and fourth octets, written in decimal, become
// the third and fourth groups of 2001:db8::/32 (RFC 3849). 198.51.100.0/24 is
// 2001:db8:100::/64, 192.0.2.64/26 is 2001:db8:2:64::/64.
func prefix6(subnet netip.Prefix) netip.Prefix {
	b := subnet.Addr().As4()
	return netip.MustParsePrefix(fmt.Sprintf("2001:db8:%d:%d::/64", b[2], b[3]))
}

// addr6 returns the IPv6 address mirroring a in subnet: its last octet, in
// decimal, in prefix6(subnet). 198.51.100.7 is 2001:db8:100::7.
func addr6(subnet netip.Prefix, a netip.Addr) netip.Addr {
	p := prefix6(subnet).Addr().As16()
	b := a.As4()
	// The decimal digits of the octet read as hex: 7 is 0x7, 254 is 0x254.
	v := uint16(b[3]/100)<<8 | uint16(b[3]/10%10)<<4 | uint16(b[3]%10)
	p[14], p[15] = byte(v>>8), byte(v)
	return netip.AddrFrom16(p)
}
