package enrich

import (
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/flowmap/flowmap/model"
)

// Bounds of the owner history (see ownerHistory).
const (
	// DefaultHistoryBytes bounds the owner history's estimated memory:
	// 4 MiB, the past owners of about 5,000 addresses (a pod of ten
	// labels is about 700 B, held once for all its keys).
	DefaultHistoryBytes = 4 << 20
	// HistoryAge is how long a past owner is kept after the inventory saw
	// it go: far longer than a drain interval, after which no flow seen
	// while it held the address is still to be named.
	HistoryAge = 10 * time.Minute
)

// ownerKey is what an owner holds: an address, or a namespace id (as the
// host's namespace numbers its peers).
type ownerKey struct {
	addr [16]byte
	nsid int
	ns   bool
}

// pastOwner is who held a key until the inventory saw it go.
type pastOwner struct {
	ep    *model.Endpoint
	until time.Time
}

// Sizes in an ownerHistory, as Go lays them out: an entry costs its
// pastOwner in its key's slice (32 B, with a slice growing by doubling:
// 16 B of spare room on average), its slot in the queue (40 B, the same
// doubling: 20 B more) and its key's map slot (key 40 B and slice header
// 24 B, at load 0.65 and with the map's control bytes: about 110 B,
// counted on each entry as a key rarely has two). TestHistoryBytesEstimate
// checks them against the heap.
const (
	historyEntryBytes = int(unsafe.Sizeof(pastOwner{})) + 16 + int(unsafe.Sizeof(ownerKey{})) + 20 + 110
	endpointBytes     = int(unsafe.Sizeof(model.Endpoint{}))
)

// ownerHistory remembers who held an address or a namespace id before its
// current owner, with when the inventory saw each go, so that a flow is
// named by who held its address when it was seen, not when it was drained
// (Inventory.Enrich): a pod's address, or its namespace's id, may pass to
// another pod between the first pod's last packet and the drain. It keeps
// the past owners of the last HistoryAge, within a bound on its estimated
// memory, the oldest going first. Its methods are safe for concurrent use.
type ownerHistory struct {
	mu    sync.RWMutex
	byKey map[ownerKey][]pastOwner // each key's past owners, oldest first
	// queue is every entry's key in the order added (the order of
	// their until, as the merger adds them with the time of its merge),
	// from head on: the oldest goes first.
	queue []ownerKey
	head  int
	// refs counts the entries of each endpoint: an endpoint's memory
	// is counted once, however many of its addresses it held.
	refs     map[*model.Endpoint]int
	bytes    int
	maxBytes int
	dropped  uint64
	// held is how many entries there are, read without the lock: a
	// history with none (no address changed hands lately) is not looked
	// in.
	held atomic.Int64
}

func newOwnerHistory(maxBytes int) *ownerHistory {
	if maxBytes <= 0 {
		maxBytes = DefaultHistoryBytes
	}
	return &ownerHistory{byKey: make(map[ownerKey][]pastOwner), refs: make(map[*model.Endpoint]int), maxBytes: maxBytes}
}

// add records that ep held k until until, and lets go of what is older
// than HistoryAge before until or past the bound.
func (h *ownerHistory) add(k ownerKey, ep *model.Endpoint, until time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.byKey[k] = append(h.byKey[k], pastOwner{ep: ep, until: until})
	h.queue = append(h.queue, k)
	h.held.Add(1)
	h.bytes += historyEntryBytes
	if h.refs[ep]++; h.refs[ep] == 1 {
		h.bytes += sizeOfEndpoint(ep)
	}
	for h.head < len(h.queue) && (h.bytes > h.maxBytes || until.Sub(h.oldest()) > HistoryAge) {
		h.drop()
		h.dropped++
	}
}

// expire lets go of what is older than HistoryAge before now.
func (h *ownerHistory) expire(now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for h.head < len(h.queue) && now.Sub(h.oldest()) > HistoryAge {
		h.drop()
	}
}

// oldest is when the oldest entry's owner went. The caller holds h.mu
// and h has an entry.
func (h *ownerHistory) oldest() time.Time { return h.byKey[h.queue[h.head]][0].until }

// drop lets go of the oldest entry. The caller holds h.mu.
func (h *ownerHistory) drop() {
	k := h.queue[h.head]
	h.queue[h.head] = ownerKey{}
	h.head++
	if h.head == len(h.queue) {
		h.queue, h.head = h.queue[:0], 0
	} else if h.head > 1024 && h.head > len(h.queue)/2 {
		h.queue = append(h.queue[:0], h.queue[h.head:]...)
		h.head = 0
	}
	past := h.byKey[k]
	ep := past[0].ep
	if len(past) == 1 {
		delete(h.byKey, k)
	} else {
		past[0] = pastOwner{}
		h.byKey[k] = past[1:]
	}
	h.held.Add(-1)
	h.bytes -= historyEntryBytes
	if h.refs[ep]--; h.refs[ep] == 0 {
		delete(h.refs, ep)
		h.bytes -= sizeOfEndpoint(ep)
	}
}

// at returns who held k at t, where that was a past owner: the first
// that the inventory saw go after t. A t between one owner going and the
// next coming is the next's (the first had gone). It returns false where
// k's current owner, if any, held it at t, or t is zero.
func (h *ownerHistory) at(k ownerKey, t time.Time) (*model.Endpoint, bool) {
	if t.IsZero() || h.held.Load() == 0 {
		return nil, false
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	for _, p := range h.byKey[k] {
		if t.Before(p.until) {
			return p.ep, true
		}
	}
	return nil, false
}

// usage is the history's estimated memory and bound: entries are past
// owners, and Dropped those let go of before HistoryAge to stay within
// the bound.
func (h *ownerHistory) usage() model.StoreUsage {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return model.StoreUsage{Entries: uint64(len(h.queue) - h.head), Bytes: uint64(h.bytes),
		LimitBytes: uint64(h.maxBytes), Dropped: h.dropped}
}

// sizeOfEndpoint estimates the memory of ep and what it points to: its
// strings, its addresses' array, and its labels' map (about 80 B a label
// besides the strings' bytes, a Go map's slot, control byte and load).
func sizeOfEndpoint(ep *model.Endpoint) int {
	n := endpointBytes + len(ep.ID) + len(ep.Name) + len(ep.Namespace) + len(ep.Workload) +
		len(ep.WorkloadKind) + len(ep.Node) + len(ep.Image) + len(ep.Source) + cap(ep.Addrs)*24
	if len(ep.Labels) > 0 {
		n += 48
		for k, v := range ep.Labels {
			n += 80 + len(k) + len(v)
		}
	}
	return n
}

// sameHolder reports whether cur holds what old held as the same
// endpoint: the same id, or the same network namespace named better (a
// namespace that the runtime or the API server then names a container or
// a pod). A namespace's inode, as a namespace id, is reused once it is
// freed: the same namespace inode named as another pod is another holder.
func sameHolder(old, cur *model.Endpoint) bool {
	if old.Kind == cur.Kind && old.ID == cur.ID {
		return true
	}
	return old.NetNS != 0 && old.NetNS == cur.NetNS && holderRank(old.Kind) < holderRank(cur.Kind)
}

// holderRank orders what an endpoint is known as, from merely a namespace
// to a pod.
func holderRank(k model.EndpointKind) int {
	switch k {
	case model.KindContainer:
		return 1
	case model.KindPod:
		return 2
	case model.KindNetNS, model.KindUnknown, "":
		return 0
	}
	return 3
}
