package enrich

import (
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
)

const uidB = "9d0e1f2a-3b4c-4d5e-8f6a-7b8c9d0e1f2a"

// TestEnrichAddressHandedOver: a pod's address and its namespace's id
// (and inode) pass to another pod between the first pod's last packet and
// the drain, as the Kubernetes box's ip_reuse test does with a full pod
// range. Each flow is named by who held the address when it was last
// seen; before the history, the first pod's was named the second.
func TestEnrichAddressHandedOver(t *testing.T) {
	const ip = "10.88.0.5"
	lone := record{ep: model.Endpoint{Kind: model.KindPod, ID: "lone-uid", Name: "lone", Namespace: "apps", Addrs: addrs("10.88.0.2")}, keys: []joinKey{podKey("lone-uid")}}
	pod := func(uid, name string) record {
		return record{ep: model.Endpoint{Kind: model.KindPod, ID: uid, Name: name, Namespace: "apps", Addrs: addrs(ip)}, keys: []joinKey{podKey(uid)}}
	}
	// The netns source's record: the namespace's inode and id are freed
	// with the first pod and taken again by the second.
	netns := func(uid string) record {
		return record{ep: model.Endpoint{Kind: model.KindNetNS, ID: "netns:4026532500", NetNS: 4026532500, Addrs: addrs(ip)}, keys: []joinKey{podKey(uid)}, nsids: []int{3}}
	}
	inv := newTestInventory(t, map[string][]record{
		"kubernetes": {lone, pod(uidA, "reuse-a")},
		"netns":      {netns(uidA)},
	})
	publish := func(bySource map[string][]record) {
		for name, recs := range bySource {
			for i := range recs {
				recs[i].prio = map[string]int{"kubernetes": prioKubernetes, "netns": prioNetNS}[name]
				recs[i].ep.Source = name
			}
			inv.publish(name, recs)
		}
		inv.rebuild()
	}
	// flow is lone → the address at 8080, last seen now, counted as it
	// left toward the server at the veth of ifindex (its egress).
	flow := func(ifindex int) model.Record {
		now := time.Now()
		return model.Record{Src: netip.MustParseAddr("10.88.0.2"), Dst: netip.MustParseAddr(ip), Proto: model.ProtoTCP,
			SrcPort: 40000 + uint16(ifindex), DstPort: 8080, FirstSeen: now.Add(-time.Millisecond), LastSeen: now,
			Forward: model.Direction{Bytes: 1000, Packets: 5, Point: model.PointTCEgress, Ifindex: ifindex},
			DstIf:   model.Interface{Index: ifindex, Name: fmt.Sprintf("veth%d", ifindex), Kind: "veth", PeerNetNSID: 3}}
	}
	check := func(what string, r model.Record, want string) {
		t.Helper()
		if f := inv.Enrich(r); f.DstEndpoint.Name != want || f.SrcEndpoint.Name != "lone" {
			t.Errorf("%s: %s → %s (%s), want lone → %s", what, f.SrcEndpoint.Name, f.DstEndpoint.Name, f.DstEndpoint.Kind, want)
		}
		// By address alone, as a flow that no watched interface saw.
		r.DstIf = model.Interface{PeerNetNSID: -1}
		if f := inv.Enrich(r); f.DstEndpoint.Name != want {
			t.Errorf("%s, by address: → %s (%s), want → %s", what, f.DstEndpoint.Name, f.DstEndpoint.Kind, want)
		}
	}
	toA := flow(10)
	check("reuse-a's flow before it went", toA, "reuse-a")

	// reuse-a goes: the API server and the namespace.
	publish(map[string][]record{"kubernetes": {lone}, "netns": nil})
	check("reuse-a's flow drained after it went", toA, "reuse-a")

	// reuse-b comes: first its namespace (same inode, same id), then the
	// API server names it.
	publish(map[string][]record{"netns": {netns(uidB)}})
	early := flow(11)
	publish(map[string][]record{"kubernetes": {lone, pod(uidB, "reuse-b")}})
	toB := flow(11)
	check("reuse-a's flow drained after reuse-b took the address", toA, "reuse-a")
	check("reuse-b's flow before the API server named it", early, "reuse-b")
	check("reuse-b's flow", toB, "reuse-b")

	// A record with no times (none counted) is named by the current owner.
	noTime := toA
	noTime.FirstSeen, noTime.LastSeen = time.Time{}, time.Time{}
	check("a record without times", noTime, "reuse-b")

	// A handover within one merge: reuse-b goes and reuse-c comes at once.
	publish(map[string][]record{"kubernetes": {lone, pod("reuse-c-uid", "reuse-c")}, "netns": {netns("reuse-c-uid")}})
	toC := flow(12)
	check("reuse-b's flow after a handover in one merge", toB, "reuse-b")
	check("reuse-c's flow", toC, "reuse-c")
	check("reuse-a's flow still", toA, "reuse-a")

	// The history holds reuse-a and reuse-b, by address and namespace id
	// (reuse-a also as its namespace alone, between the API server's
	// delete and the namespace's), each pod counted once.
	if u := inv.HistoryUsage(); u.Entries < 4 || u.Bytes == 0 || u.LimitBytes != DefaultHistoryBytes || u.Dropped != 0 {
		t.Errorf("history usage %+v, want at least 4 entries within %d B, none dropped", u, DefaultHistoryBytes)
	}
}

// TestHistoryBytes fills the history past its byte bound: the estimate
// stays under it, the oldest owners go, counted, and the newest stay.
func TestHistoryBytes(t *testing.T) {
	const limit = 256 << 10
	h := newOwnerHistory(limit)
	t0 := time.Now()
	const added = 5000
	for i := range added {
		h.add(ownerKey{addr: netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}).As16()}, historyPod(i), t0.Add(time.Duration(i)*time.Millisecond))
	}
	u := h.usage()
	if u.Bytes > limit || u.LimitBytes != limit || u.Dropped != added-u.Entries || u.Entries == 0 {
		t.Errorf("usage %+v, want at most %d B and %d dropped", u, limit, added-u.Entries)
	}
	at := func(i int) bool {
		_, ok := h.at(ownerKey{addr: netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}).As16()}, t0)
		return ok
	}
	if !at(added-1) || at(0) {
		t.Errorf("the newest owner is known %v, the oldest %v: want the newest only", at(added-1), at(0))
	}
	// Past HistoryAge, all go.
	h.expire(t0.Add(added*time.Millisecond + HistoryAge + time.Second))
	if u := h.usage(); u.Entries != 0 || u.Bytes != 0 {
		t.Errorf("after HistoryAge, usage %+v, want empty", u)
	}
}

// historyPod is a pod of Kubernetes-like names and five labels, its
// strings on the heap as a decoded API object's are.
func historyPod(i int) *model.Endpoint {
	c := strings.Clone
	return &model.Endpoint{Kind: model.KindPod, ID: fmt.Sprintf("6c1f8b2e-4a5d-4e3f-9b2a-%012d", i),
		Name: fmt.Sprintf("checkout-7d9f8c6b5-%05d", i), Namespace: c("shop"), Workload: c("checkout"), WorkloadKind: c("Deployment"),
		Node: c("node-1"), Image: c("registry.example.com/shop/checkout:1.2.3"), Source: c("kubernetes"),
		Labels: map[string]string{c("app"): c("checkout"), c("pod-template-hash"): c("7d9f8c6b5"), c("tier"): c("backend"),
			c("version"): c("1.2.3"), c("team"): fmt.Sprint("shop-", i%7)},
		Addrs: []netip.Addr{netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})}}
}

// TestHistoryBytesEstimate checks the estimate against the heap's growth:
// 20,000 pods that each held an address and a namespace id.
func TestHistoryBytesEstimate(t *testing.T) {
	before := testenv.LiveHeap()
	h := newOwnerHistory(1 << 30)
	t0 := time.Now()
	for i := range 20000 {
		ep := historyPod(i)
		until := t0.Add(time.Duration(i) * time.Microsecond)
		h.add(ownerKey{addr: ep.Addrs[0].As16()}, ep, until)
		h.add(ownerKey{nsid: i, ns: true}, ep, until)
	}
	grown := testenv.LiveHeap() - before
	testenv.CheckEstimate(t, fmt.Sprintf("%d past owners", h.usage().Entries), h.usage().Bytes, grown, 0.25)
	runtime.KeepAlive(h)
}
