package flows

import (
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
)

// inNewNetNS runs fn on a thread in a new network namespace, with its own
// conntrack table, and a handle on it.
func inNewNetNS(t *testing.T, fn func(h *netlink.Handle)) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		// The thread is left to end with the goroutine: it is in the
		// namespace.
		ns, err := netns.New()
		if err != nil {
			t.Errorf("new netns: %v", err)
			return
		}
		defer ns.Close()
		h, err := netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER)
		if err != nil {
			t.Errorf("netlink handle: %v", err)
			return
		}
		defer h.Close()
		fn(h)
	}()
	<-done
}

// ctFlow is a conntrack entry of proto from src to dst, answered by
// reply (a NATed server) or dst.
func ctFlow(proto uint8, src, dst, reply netip.AddrPort) *netlink.ConntrackFlow {
	family := uint8(unix.AF_INET)
	if !src.Addr().Is4() {
		family = unix.AF_INET6
	}
	f := &netlink.ConntrackFlow{FamilyType: family, TimeOut: 600,
		Forward: netlink.IPTuple{Protocol: proto, SrcIP: net.IP(src.Addr().AsSlice()), DstIP: net.IP(dst.Addr().AsSlice()), SrcPort: src.Port(), DstPort: dst.Port()},
		Reverse: netlink.IPTuple{Protocol: proto, SrcIP: net.IP(reply.Addr().AsSlice()), DstIP: net.IP(src.Addr().AsSlice()), SrcPort: reply.Port(), DstPort: src.Port()},
	}
	if proto == unix.IPPROTO_TCP {
		f.ProtoInfo = &netlink.ProtoInfoTCP{State: 3} // ESTABLISHED
	}
	return f
}

func ctKeyOf(t netlink.IPTuple) bpfFlowKey {
	k, _ := ctKey(t.SrcIP, t.DstIP, t.SrcPort, t.DstPort, t.Protocol)
	return k
}

// TestConntrackLookup looks connections up by their original tuple and by
// their reply tuple, IPv4 and IPv6, and misses one conntrack has not.
func TestConntrackLookup(t *testing.T) {
	testenv.MustBeRoot(t)
	ap := netip.MustParseAddrPort
	dnat := ctFlow(unix.IPPROTO_TCP, ap("198.51.100.2:40000"), ap("198.51.100.100:80"), ap("198.51.100.50:8080"))
	v6 := ctFlow(unix.IPPROTO_UDP, ap("[2001:db8::2]:5353"), ap("[2001:db8::53]:53"), ap("[2001:db8::53]:53"))
	inNewNetNS(t, func(h *netlink.Handle) {
		for _, f := range []*netlink.ConntrackFlow{dnat, v6} {
			if err := h.ConntrackCreate(netlink.ConntrackTable, netlink.InetFamily(f.FamilyType), f); err != nil {
				t.Fatalf("create conntrack entry (nf_conntrack_netlink?): %v", err)
			}
		}
		for _, tc := range []struct {
			name string
			key  bpfFlowKey
			want *netlink.ConntrackFlow
		}{
			{"original", ctKeyOf(dnat.Forward), dnat},
			{"reply", ctKeyOf(dnat.Reverse), dnat},
			{"ipv6 reply", ctKeyOf(v6.Reverse), v6},
			{"unknown", flowKey("198.51.100.3", "198.51.100.100", 40000, 80, layers.IPProtocolTCP, 0), nil},
		} {
			var got []bpfFlowKey
			n, err := ctLookup([]bpfFlowKey{tc.key}, func(c *netlink.ConntrackFlow) {
				got = append(got, ctKeyOf(c.Forward), ctKeyOf(c.Reverse))
			})
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			if tc.want == nil {
				if n != 0 {
					t.Errorf("%s: found %d, want none", tc.name, n)
				}
				continue
			}
			if want := []bpfFlowKey{ctKeyOf(tc.want.Forward), ctKeyOf(tc.want.Reverse)}; n != 1 || len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
				t.Errorf("%s: found %d: %v, want %v", tc.name, n, got, want)
			}
		}
	})
}

// fillConntrack creates n UDP entries.
func fillConntrack(t *testing.T, h *netlink.Handle, n int) {
	t.Helper()
	for i := range n {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 1024+uint16(i%60000))
		dst := netip.MustParseAddrPort("10.255.0.1:53")
		if err := h.ConntrackCreate(netlink.ConntrackTable, unix.AF_INET, ctFlow(unix.IPPROTO_UDP, src, dst, dst)); err != nil {
			t.Fatalf("create conntrack entry %d: %v", i, err)
		}
	}
}

// TestConntrackDrainCost compares, on a table of 100,000 entries (a SYN
// flood's), the dump each drain did before with the lookups it does now,
// for a drain of 1,000 connections and one of 65,536 (the flow map
// full): time and bytes allocated, interleaved over 3 rounds. Timing
// decides nothing; the lookups must find every connection.
func TestConntrackDrainCost(t *testing.T) {
	testenv.MustBeRoot(t)
	if testing.Short() {
		t.Skip("fills conntrack with 100,000 entries")
	}
	const entries = 100000
	inNewNetNS(t, func(h *netlink.Handle) {
		fillConntrack(t, h, entries)
		keys := make([]bpfFlowKey, 65536)
		for i := range keys {
			keys[i] = flowKey(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}).String(), "10.255.0.1", 1024+uint16(i%60000), 53, layers.IPProtocolUDP, 0)
		}
		measure := func(fn func() int) (time.Duration, uint64, int) {
			var m0, m1 runtime.MemStats
			runtime.ReadMemStats(&m0)
			t0 := time.Now()
			n := fn()
			took := time.Since(t0)
			runtime.ReadMemStats(&m1)
			return took, m1.TotalAlloc - m0.TotalAlloc, n
		}
		dump := func() int {
			fs, err := h.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
			if err != nil {
				t.Fatalf("dump: %v", err)
			}
			return len(fs)
		}
		lookup := func(n int) func() int {
			return func() int {
				found, err := ctLookup(keys[:n], func(*netlink.ConntrackFlow) {})
				if err != nil {
					t.Fatalf("lookup: %v", err)
				}
				return found
			}
		}
		for round := range 3 {
			dt, da, dn := measure(dump)
			lt, la, ln := measure(lookup(1000))
			ft, fa, fn := measure(lookup(len(keys)))
			t.Logf("round %d: dump of %d: %v, %d B allocated; lookup of %d: %v, %d B (%.1f%% of the dump's time); lookup of %d: %v, %d B (%.0f%%)",
				round, dn, dt, da, ln, lt, la, 100*lt.Seconds()/dt.Seconds(), fn, ft, fa, 100*ft.Seconds()/dt.Seconds())
			if dn != entries || ln != 1000 || fn != len(keys) {
				t.Errorf("dump %d, lookups found %d and %d: want %d, 1000 and %d", dn, ln, fn, entries, len(keys))
			}
		}
	})
}

// TestConntrackCandidates: one lookup per connection, TCP and UDP only,
// none for a half-open client's.
func TestConntrackCandidates(t *testing.T) {
	const syn, ack = model.FlagSYNOnly | 0x02, 0x10
	dir := func(flags uint16) *direction {
		return &direction{Direction: model.Direction{Packets: 1, TCPFlags: flags}}
	}
	req := flowKey("198.51.100.2", "198.51.100.3", 40000, 80, layers.IPProtocolTCP, 0)
	flood := flowKey("203.0.113.9", "198.51.100.3", 1234, 80, layers.IPProtocolTCP, 0)
	udp := flowKey("198.51.100.2", "198.51.100.53", 5353, 53, layers.IPProtocolUDP, 0)
	icmp := flowKey("198.51.100.2", "198.51.100.3", 8, 0, layers.IPProtocolICMPv4, 0)
	dnatReply := flowKey("198.51.100.50", "198.51.100.2", 8080, 40001, layers.IPProtocolTCP, 0)
	dirs := newFlowTable()
	for k, d := range map[bpfFlowKey]*direction{
		req: dir(syn | ack), reverse(req): dir(model.FlagSYNACK | 0x12),
		flood: dir(syn), reverse(flood): dir(model.FlagSYNACK | 0x12),
		udp: dir(0), icmp: dir(0), dnatReply: dir(model.FlagSYNACK | 0x12),
	} {
		*dirs.put(k) = *d
	}
	keys, skipped := ctCandidates(nil, dirs)
	got := map[bpfFlowKey]bool{}
	for _, k := range keys {
		got[k] = true
	}
	if len(keys) != 4 || !got[req] || !got[reverse(req)] || !got[udp] || !got[dnatReply] || skipped != 1 {
		t.Errorf("candidates %v, %d skipped: want both of the request's pair (a request counted after DNAT is under neither of conntrack's tuples, its answer under the reply's), the UDP one and the NATed reply, and the flood's skipped", keys, skipped)
	}
}
