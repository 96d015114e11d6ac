package flows

import (
	"net"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flowmap/flowmap/model"
)

func TestNATJoin(t *testing.T) {
	key := func(src, dst string, sport, dport uint16) bpfFlowKey {
		k, ok := ctKey(net.ParseIP(src), net.ParseIP(dst), sport, dport, unix.IPPROTO_TCP)
		if !ok {
			t.Fatalf("bad addresses %s, %s", src, dst)
		}
		return k
	}
	ct := func(fsrc, fdst string, fsport, fdport uint16, rsrc, rdst string, rsport, rdport uint16) *netlink.ConntrackFlow {
		return &netlink.ConntrackFlow{
			Forward: netlink.IPTuple{SrcIP: net.ParseIP(fsrc), DstIP: net.ParseIP(fdst), SrcPort: fsport, DstPort: fdport, Protocol: unix.IPPROTO_TCP},
			Reverse: netlink.IPTuple{SrcIP: net.ParseIP(rsrc), DstIP: net.ParseIP(rdst), SrcPort: rsport, DstPort: rdport, Protocol: unix.IPPROTO_TCP},
		}
	}
	dir := func(bytes uint64, p model.Point) *direction {
		return &direction{Direction: model.Direction{Bytes: bytes, Packets: 1, Point: p, Ifindex: 3}, first: 10, lastJ: 5}
	}
	const (
		pod  = "198.51.100.34"
		node = "198.51.100.98"
		out  = "203.0.113.7"
		vip  = "198.51.101.10" // a Service's ClusterIP
		// backend is the pod behind the Service that answered.
		backend = "198.51.100.35"
	)
	for _, tc := range []struct {
		name  string
		dirs  map[bpfFlowKey]*direction
		conns []*netlink.ConntrackFlow
		want  map[bpfFlowKey]uint64 // bytes by key after
		moved int
		// backends are the directions' backends after, where not zero.
		backends map[bpfFlowKey]string
	}{{
		name: "masquerade: the reply counted at the NIC joins the request counted at the pod's veth",
		dirs: map[bpfFlowKey]*direction{
			key(pod, out, 40000, 443):  dir(100, model.PointTCIngress),
			key(out, node, 443, 50000): dir(900, model.PointTCIngress),
		},
		conns: []*netlink.ConntrackFlow{ct(pod, out, 40000, 443, out, node, 443, 50000)},
		want:  map[bpfFlowKey]uint64{key(pod, out, 40000, 443): 100, key(out, pod, 443, 40000): 900},
		moved: 1,
	}, {
		name: "published port: the pod's reply joins the request counted at the NIC",
		dirs: map[bpfFlowKey]*direction{
			key(out, node, 5555, 8080): dir(100, model.PointTCIngress),
			key(pod, out, 80, 5555):    dir(700, model.PointTCIngress),
		},
		conns:    []*netlink.ConntrackFlow{ct(out, node, 5555, 8080, pod, out, 80, 5555)},
		want:     map[bpfFlowKey]uint64{key(out, node, 5555, 8080): 100, key(node, out, 8080, 5555): 700},
		moved:    1,
		backends: map[bpfFlowKey]string{key(out, node, 5555, 8080): pod + ":80", key(node, out, 8080, 5555): pod + ":80"},
	}, {
		name: "ClusterIP: the backend's reply joins the request counted at the client's veth, both carry the backend",
		dirs: map[bpfFlowKey]*direction{
			key(pod, vip, 40000, 80):       dir(300, model.PointTCIngress),
			key(backend, pod, 8080, 40000): dir(900, model.PointTCIngress),
		},
		conns:    []*netlink.ConntrackFlow{ct(pod, vip, 40000, 80, backend, pod, 8080, 40000)},
		want:     map[bpfFlowKey]uint64{key(pod, vip, 40000, 80): 300, key(vip, pod, 80, 40000): 900},
		moved:    1,
		backends: map[bpfFlowKey]string{key(pod, vip, 40000, 80): backend + ":8080", key(vip, pod, 80, 40000): backend + ":8080"},
	}, {
		name: "ClusterIP from the host: its request, counted after DNAT at the backend's veth, moves to the dialled tuple",
		dirs: map[bpfFlowKey]*direction{
			key(node, backend, 41000, 8080): dir(300, model.PointTCEgress),
			key(backend, node, 8080, 41000): dir(900, model.PointTCIngress),
		},
		conns:    []*netlink.ConntrackFlow{ct(node, vip, 41000, 80, backend, node, 8080, 41000)},
		want:     map[bpfFlowKey]uint64{key(node, vip, 41000, 80): 300, key(vip, node, 80, 41000): 900},
		moved:    2,
		backends: map[bpfFlowKey]string{key(node, vip, 41000, 80): backend + ":8080", key(vip, node, 80, 41000): backend + ":8080"},
	}, {
		name: "counted at both tuples in one interval: added up",
		dirs: map[bpfFlowKey]*direction{
			key(out, node, 443, 50000): dir(900, model.PointTCIngress),
			key(out, pod, 443, 40000):  dir(50, model.PointTCEgress),
		},
		conns: []*netlink.ConntrackFlow{ct(pod, out, 40000, 443, out, node, 443, 50000)},
		want:  map[bpfFlowKey]uint64{key(out, pod, 443, 40000): 950},
		moved: 1,
	}, {
		name: "not NATed: left alone",
		dirs: map[bpfFlowKey]*direction{
			key(pod, out, 40000, 443): dir(100, model.PointTCIngress),
			key(out, pod, 443, 40000): dir(900, model.PointTCIngress),
		},
		conns: []*netlink.ConntrackFlow{ct(pod, out, 40000, 443, out, pod, 443, 40000)},
		want:  map[bpfFlowKey]uint64{key(pod, out, 40000, 443): 100, key(out, pod, 443, 40000): 900},
	}, {
		name:  "conntrack of flows not counted: nothing to do",
		dirs:  map[bpfFlowKey]*direction{key(pod, out, 1, 2): dir(1, model.PointTCIngress)},
		conns: []*netlink.ConntrackFlow{ct(pod, out, 40000, 443, out, node, 443, 50000)},
		want:  map[bpfFlowKey]uint64{key(pod, out, 1, 2): 1},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			table := newFlowTable()
			for k, d := range tc.dirs {
				*table.put(k) = *d
			}
			if moved := natJoin(table, tc.conns); moved != tc.moved {
				t.Errorf("natJoin moved %d directions, want %d", moved, tc.moved)
			}
			got := map[bpfFlowKey]uint64{}
			table.each(func(k bpfFlowKey, dir, rev *direction) {
				if dir != nil {
					got[k] = dir.Bytes
				}
				if rev != nil {
					got[reverse(k)] = rev.Bytes
				}
			})
			if len(got) != len(tc.want) {
				t.Errorf("got %d directions, want %d", len(got), len(tc.want))
			}
			for k, w := range tc.want {
				if g, ok := got[k]; !ok || g != w {
					t.Errorf("%s: %d bytes (there: %v), want %d", keyString(k), g, ok, w)
				}
				if d := table.get(k); d != nil {
					var b string
					if d.backend.IsValid() {
						b = d.backend.String()
					}
					if b != tc.backends[k] {
						t.Errorf("%s: backend %q, want %q", keyString(k), b, tc.backends[k])
					}
				}
			}
		})
	}
}
