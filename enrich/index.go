package enrich

import (
	"maps"
	"net/netip"
	"slices"

	"github.com/flowmap/flowmap/model"
)

// record is what one source knows of one endpoint.
type record struct {
	ep model.Endpoint
	// keys join this record with other sources' records of the same
	// endpoint, besides its network namespace and addresses.
	keys []joinKey
	// nsids are the ids under which the host's namespace knows the
	// endpoint's network namespace (set by the netns source).
	nsids []int
	prio  int
	// claims are addresses that users wrote and the platform did not
	// assign (a Service's externalIPs and load-balancer ingress, a
	// selectorless EndpointSlice's endpoints): they join nothing, and name
	// the endpoint only where no record owns them in ep.Addrs (see
	// grantClaims). ep.Addrs are the addresses the platform assigned: a
	// runtime's or the kubelet's pod IPs, ClusterIPs, node addresses.
	claims []netip.Addr
	// routed are the prefixes the endpoint's namespace forwards for (set
	// by the netns source, see routedFor): sources it may send besides its
	// own addresses.
	routed []netip.Prefix
	// nodePorts are a Service's NodePorts: connections to a node's
	// address on one of them, which the node translated, are to the
	// Service (see Inventory.Enrich).
	nodePorts []portKey
}

// portKey is a protocol's port.
type portKey struct {
	proto model.Proto
	port  uint16
}

// joinKey is something that only one endpoint has.
type joinKey struct {
	kind byte // one of the key* constants
	s    string
	n    uint64
	a    netip.Addr
}

const (
	keyContainer = iota + 1 // s: a container id, as runtimes write it (64 hex digits)
	keyPodUID               // s: a pod's UID
	keyNetNS                // n: a network namespace's inode
	keyAddr                 // a: an address the endpoint owns
	keyHost                 // this machine
)

func containerKey(id string) joinKey { return joinKey{kind: keyContainer, s: id} }
func podKey(uid string) joinKey      { return joinKey{kind: keyPodUID, s: uid} }
func hostKey() joinKey               { return joinKey{kind: keyHost} }

// group is the records of one endpoint, by priority.
type group []record

// join groups records that share a key: a container id, a pod UID, a
// network namespace or an address.
func join(recs []record) []group {
	parent := make([]int, len(recs))
	for i := range parent {
		parent[i] = i
	}
	var find func(int) int
	find = func(i int) int {
		for parent[i] != i {
			parent[i] = parent[parent[i]]
			i = parent[i]
		}
		return i
	}
	first := make(map[joinKey]int, 2*len(recs))
	union := func(k joinKey, i int) {
		if j, ok := first[k]; ok {
			ri, rj := find(i), find(j)
			if ri != rj {
				parent[ri] = rj
			}
			return
		}
		first[k] = i
	}
	for i, r := range recs {
		for _, k := range r.keys {
			union(k, i)
		}
		if r.ep.NetNS != 0 {
			union(joinKey{kind: keyNetNS, n: r.ep.NetNS}, i)
		}
		for _, a := range r.ep.Addrs {
			union(joinKey{kind: keyAddr, a: a}, i)
		}
	}
	// Group by root without a map: count, then place records in one
	// backing array, in their order.
	size := make([]int, len(recs))
	for i := range recs {
		size[find(i)]++
	}
	var groups []group
	slot := make([]int, len(recs)) // index into groups, by root
	backing := make([]record, len(recs))
	at := 0
	for i := range recs {
		if parent[i] == i {
			slot[i] = len(groups)
			groups = append(groups, backing[at:at:at+size[i]])
			at += size[i]
		}
	}
	for i, r := range recs {
		k := slot[find(i)]
		groups[k] = append(groups[k], r)
	}
	for _, g := range groups {
		slices.SortStableFunc(g, func(a, b record) int { return a.prio - b.prio })
	}
	return groups
}

// grantClaims returns, for each of eps (the endpoints of groups, in their
// order), the addresses that its records claim and that it may have: those
// no endpoint owns (in its Addrs), each to one claimant, the one of least
// ID where several claim it. refused counts the claims of owned addresses:
// a Service in dev whose externalIPs list a prod pod's IP or a node's
// does not take the pod or the node.
func grantClaims(groups []group, eps []*model.Endpoint) (granted [][]netip.Addr, refused int) {
	owned := make(map[netip.Addr]bool)
	for _, ep := range eps {
		for _, a := range ep.Addrs {
			owned[a] = true
		}
	}
	claimant := make(map[netip.Addr]int)
	for i, g := range groups {
		for _, r := range g {
			for _, a := range r.claims {
				if owned[a] {
					refused++
					continue
				}
				if j, ok := claimant[a]; !ok || eps[i].ID < eps[j].ID {
					claimant[a] = i
				}
			}
		}
	}
	if len(claimant) == 0 {
		return nil, refused
	}
	granted = make([][]netip.Addr, len(groups))
	for a, i := range claimant {
		granted[i] = append(granted[i], a)
	}
	return granted, refused
}

// endpoint merges the group's records: the most trusted source that says
// what the endpoint is (not merely a namespace or unknown) gives its kind,
// id and source; each other field comes from the most trusted source that
// has it; labels and addresses are the union.
func (g group) endpoint() model.Endpoint {
	if len(g) == 1 {
		return g[0].ep
	}
	primary := 0
	for i, r := range g {
		if r.ep.Kind != model.KindNetNS && r.ep.Kind != model.KindUnknown && r.ep.Kind != "" {
			primary = i
			break
		}
	}
	ep := g[primary].ep
	first := func(get func(*model.Endpoint) string) string {
		if v := get(&ep); v != "" {
			return v
		}
		for i := range g {
			if v := get(&g[i].ep); v != "" {
				return v
			}
		}
		return ""
	}
	ep.Name = first(func(e *model.Endpoint) string { return e.Name })
	ep.Namespace = first(func(e *model.Endpoint) string { return e.Namespace })
	ep.Node = first(func(e *model.Endpoint) string { return e.Node })
	ep.Image = first(func(e *model.Endpoint) string { return e.Image })
	if ep.Workload == "" {
		for _, r := range g {
			if r.ep.Workload != "" {
				ep.Workload, ep.WorkloadKind = r.ep.Workload, r.ep.WorkloadKind
				break
			}
		}
	}
	var withLabels int
	var addrs []netip.Addr
	for _, r := range g {
		if len(r.ep.Labels) > 0 {
			withLabels++
		}
		if ep.NetNS == 0 {
			ep.NetNS = r.ep.NetNS
		}
		if ep.PIDNS == 0 {
			ep.PIDNS = r.ep.PIDNS
		}
		addrs = append(addrs, r.ep.Addrs...)
	}
	if withLabels > 1 {
		labels := make(map[string]string)
		for i := len(g) - 1; i >= 0; i-- { // the most trusted last, to win
			maps.Copy(labels, g[i].ep.Labels)
		}
		ep.Labels = labels
	} else {
		for _, r := range g {
			if len(r.ep.Labels) > 0 {
				ep.Labels = r.ep.Labels
			}
		}
	}
	slices.SortFunc(addrs, func(a, b netip.Addr) int { return a.Compare(b) })
	ep.Addrs = slices.Compact(addrs)
	return ep
}
