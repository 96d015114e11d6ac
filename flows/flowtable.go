package flows

import (
	"bytes"

	"github.com/flowmap/flowmap/model"
)

// flowEntry is both directions of one flow as a drain read them: dirs[0]
// is the direction whose key is the entry's key, dirs[1] its reverse.
type flowEntry struct {
	key  bpfFlowKey
	dirs [2]direction
	has  [2]bool
}

// entryChunk is how many flows the table allocates at once.
const entryChunk = 4096

// flowTable holds one drain's flow directions, both directions of a flow
// in one entry found by the flow's canonical key (see canon): pairing the
// directions costs the one lookup that adds each, not a second one for
// the reverse, and records walks the entries in order. The index holds
// no pointers, so the collector does not scan it; the entries live in
// chunks kept for the next drain.
type flowTable struct {
	index  map[bpfFlowKey]int32
	chunks [][]flowEntry
	used   int // entries handed out since reset
	n      int // directions present
}

func newFlowTable() *flowTable { return &flowTable{index: map[bpfFlowKey]int32{}} }

// canon returns the key of k's flow in the orientation whose source sorts
// first (by address, then port), and which side of it k is: 0 if k is that
// orientation, 1 if its reverse.
func canon(k bpfFlowKey) (bpfFlowKey, int) {
	// The reverse's source is k's destination, and its source port k's
	// destination port but for ICMP, where it is the reply's type.
	c := bytes.Compare(k.Saddr[:], k.Daddr[:])
	if c == 0 {
		rport := k.Dport
		if p := model.Proto(k.Proto); p == model.ProtoICMP || p == model.ProtoICMPv6 {
			rport = k.Sport
			if t, ok := icmpReply(p, k.Sport); ok {
				rport = t
			}
		}
		if k.Sport <= rport {
			return k, 0
		}
		return reverse(k), 1
	}
	if c < 0 {
		return k, 0
	}
	return reverse(k), 1
}

func (t *flowTable) entry(i int32) *flowEntry {
	return &t.chunks[i/entryChunk][i%entryChunk]
}

// put returns k's direction, zero if the table had none.
func (t *flowTable) put(k bpfFlowKey) *direction {
	ck, side := canon(k)
	i, ok := t.index[ck]
	if !ok {
		i = int32(t.used)
		c := t.used / entryChunk
		if c == len(t.chunks) {
			t.chunks = append(t.chunks, make([]flowEntry, entryChunk))
		}
		t.used++
		e := t.entry(i)
		*e = flowEntry{key: ck}
		t.index[ck] = i
	}
	e := t.entry(i)
	if !e.has[side] {
		e.has[side] = true
		e.dirs[side] = direction{}
		t.n++
	}
	return &e.dirs[side]
}

// get returns k's direction, or nil.
func (t *flowTable) get(k bpfFlowKey) *direction {
	ck, side := canon(k)
	i, ok := t.index[ck]
	if !ok {
		return nil
	}
	if e := t.entry(i); e.has[side] {
		return &e.dirs[side]
	}
	return nil
}

// remove takes k's direction out of the table and returns it.
func (t *flowTable) remove(k bpfFlowKey) (direction, bool) {
	ck, side := canon(k)
	i, ok := t.index[ck]
	if !ok {
		return direction{}, false
	}
	e := t.entry(i)
	if !e.has[side] {
		return direction{}, false
	}
	e.has[side] = false
	t.n--
	return e.dirs[side], true
}

// len returns how many directions the table holds.
func (t *flowTable) len() int { return t.n }

// each calls f with every flow: its key and the direction of that key and
// of its reverse, either nil where absent, not both.
func (t *flowTable) each(f func(k bpfFlowKey, dir, rev *direction)) {
	for i := range t.used {
		e := t.entry(int32(i))
		var dir, rev *direction
		if e.has[0] {
			dir = &e.dirs[0]
		}
		if e.has[1] {
			rev = &e.dirs[1]
		}
		if dir != nil || rev != nil {
			f(e.key, dir, rev)
		}
	}
}

// reset empties the table, keeping its memory.
func (t *flowTable) reset() {
	clear(t.index)
	t.used, t.n = 0, 0
}
