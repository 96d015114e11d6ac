package flows

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Half-open connections (see bpf/headers/handshake.h): a connection's
// SYNs, and the server's SYN-ACK or RST answering them, wait in the
// half_open LRU map, outside the flow maps, until the handshake completes,
// so that a SYN flood cannot fill the flow maps. The programs move an
// attempt into the flow maps when its client's next packet comes, folding
// its SYNs and their answer into the client's and the server's entries;
// the drain takes out the attempts refused (RST) and those whose last SYN
// is synTimeout old, and counts them as their directions' packets, SYNs
// and answers (a refused or timed-out attempt, or one accepted whose
// client never completed the handshake). What the LRU evicted before
// either is counted in HalfOpenStats, never silently lost.

// HalfOpenStats is what became of the TCP connection attempts held apart
// from the flow maps, since the start.
type HalfOpenStats struct {
	Attempts     uint64 // attempts held in half_open
	Packets      uint64 // their SYNs (retries too) and answers
	Bytes        uint64
	Promoted     uint64 // handshake completed: moved to the flow maps by the programs
	Taken        uint64 // taken out by the drain: refused, or not completed after synTimeout
	Waiting      uint64 // in half_open at the last drain
	Evicted      uint64 // pushed out of half_open by newer attempts (a flood): counted in no flow
	EvictedPkts  uint64 // their SYNs' and answers' packets and bytes
	EvictedBytes uint64
}

// halfOpenBatch is how many entries one batch syscall reads of half_open.
const halfOpenBatch = 1024

// halfOpenState is the drainer's side of half_open.
type halfOpenState struct {
	m    *ebpf.Map
	keys []bpfFlowKey
	vals []bpfAttempt
	old  []bpfFlowKey
	// waitingKeys are the directions of the attempts that waited at
	// the last drain, both ways.
	waitingKeys                 map[bpfFlowKey]struct{}
	taken, takenP, takenB       uint64 // what the drain took out, since the start
	waiting, waitingP, waitingB uint64 // what waited at the last drain
}

func newHalfOpenState(m *ebpf.Map) *halfOpenState {
	return &halfOpenState{
		m:           m,
		waitingKeys: map[bpfFlowKey]struct{}{},
		keys:        make([]bpfFlowKey, halfOpenBatch),
		vals:        make([]bpfAttempt, halfOpenBatch),
	}
}

// monoNS reads CLOCK_MONOTONIC, bpf_ktime_get_ns's clock.
func monoNS() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, fmt.Errorf("read CLOCK_MONOTONIC: %w", err)
	}
	return uint64(ts.Nano()), nil
}

// takeHalfOpen takes the attempts refused, or whose last SYN is synTimeout
// old, out of half_open, adding each to out as its directions' counts and,
// with health on, to d.health as its SYNs and answers. An attempt
// completed meanwhile is the programs': the delete decides (see promote in
// count.h).
func (d *drainer) takeHalfOpen(out *flowTable) error {
	h := d.halfOpen
	now, err := monoNS()
	if err != nil {
		return err
	}
	h.old = h.old[:0]
	var waiting, waitingP, waitingB uint64
	clear(h.waitingKeys)
	err = batchLookup(h.m, h.keys, h.vals, func(k bpfFlowKey, v *bpfAttempt) {
		// A refusal ends the attempt at once; any other waits for its
		// handshake to complete until synTimeout after its last SYN.
		if bpfAnswer(v.Answer) == bpfAnswerANSWER_RST || v.SynNs <= now && now-v.SynNs >= uint64(synTimeout) {
			h.old = append(h.old, k)
			return
		}
		waiting++
		h.waitingKeys[k] = struct{}{}
		h.waitingKeys[reverse(k)] = struct{}{}
		waitingP += v.Packets + v.AnsPackets
		waitingB += v.Bytes + v.AnsBytes
	})
	if err != nil {
		return err
	}
	for _, k := range h.old {
		var v bpfAttempt
		if err := h.m.LookupAndDelete(&k, &v); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				continue // completed (or evicted) since the lookup
			}
			return fmt.Errorf("take half-open attempt: %w", err)
		}
		h.taken++
		h.takenP += v.Packets + v.AnsPackets
		h.takenB += v.Bytes + v.AnsBytes
		rk := reverse(k)
		d.add(out, k, []bpfFlowStats{{Bytes: v.Bytes, Packets: v.Packets, FirstNs: v.FirstNs,
			LastJiffies: v.LastJiffies, Ifindex: v.Ifindex, Retransmits: v.Retransmits,
			TcpFlags: v.TcpFlags, Point: v.Point}})
		d.addSYNs(k, v.Syns, v.Retries, v.SynNs)
		if v.AnsPackets > 0 {
			d.add(out, rk, []bpfFlowStats{{Bytes: v.AnsBytes, Packets: v.AnsPackets, FirstNs: v.AnsFirstNs,
				LastJiffies: v.AnsLastJiffies, Ifindex: v.AnsIfindex, TcpFlags: v.AnsFlags, Point: v.AnsPoint,
				SynRttNs: v.RttNs}})
		}
		if d.health != nil && v.Accepts+v.Refusals > 0 {
			x := d.dirHealth(rk)
			x.Accepts += uint32(v.Accepts)
			x.Refusals += uint32(v.Refusals)
		}
	}
	h.waiting, h.waitingP, h.waitingB = waiting, waitingP, waitingB
	return nil
}

// addSYNs adds syns SYNs and retries retries, the last at synNs, to the
// health of client direction k. A SYN of an attempt the drain took out
// timed out (see outcomes) opened no new attempt where the programs count
// it: the tuple's pending SYN was still unanswered, so it is a retry.
func (d *drainer) addSYNs(k bpfFlowKey, syns, retries uint32, synNs uint64) {
	if d.health == nil || syns+retries == 0 {
		return
	}
	x := d.dirHealth(k)
	if p, ok := d.pending[k]; ok && p.counted {
		retries += syns
		syns = 0
	}
	x.Syns += syns
	x.SynRetries += retries
	x.SynNs = max(x.SynNs, synNs)
}

// dirHealth returns the health of direction k in this drain, made if new.
func (d *drainer) dirHealth(k bpfFlowKey) *dirHealth {
	x := d.health[k]
	if x == nil {
		x = d.newDirHealth()
		d.health[k] = x
	}
	return x
}

// stats returns the half-open stats from the programs' counters c
// (cumulative) and the drain's side.
func (h *halfOpenState) stats(c map[bpfCounter]uint64) HalfOpenStats {
	s := HalfOpenStats{
		Attempts: c[bpfCounterCOUNTER_HALF_OPEN_NEW],
		Packets:  c[bpfCounterCOUNTER_HALF_OPEN_PACKETS],
		Bytes:    c[bpfCounterCOUNTER_HALF_OPEN_BYTES],
		Promoted: c[bpfCounterCOUNTER_HALF_OPEN_PROMOTED],
		Taken:    h.taken,
		Waiting:  h.waiting,
	}
	sub := func(a uint64, b ...uint64) uint64 {
		for _, x := range b {
			if x > a {
				return 0
			}
			a -= x
		}
		return a
	}
	s.Evicted = sub(s.Attempts, s.Promoted, h.taken, h.waiting)
	s.EvictedPkts = sub(s.Packets, c[bpfCounterCOUNTER_HALF_OPEN_PROMOTED_PACKETS], h.takenP, h.waitingP)
	s.EvictedBytes = sub(s.Bytes, c[bpfCounterCOUNTER_HALF_OPEN_PROMOTED_BYTES], h.takenB, h.waitingB)
	return s
}

// batchLookup hands f every entry of the hash map m, read in batches of
// len(keys) without deleting them (one by one where the kernel has no
// batches).
func batchLookup[K comparable, V any](m *ebpf.Map, keys []K, vals []V, f func(K, *V)) error {
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			f(keys[i], &vals[i])
		}
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return nil
		case errors.Is(err, ebpf.ErrNotSupported):
			var (
				k K
				v V
			)
			it := m.Iterate()
			for it.Next(&k, &v) {
				f(k, &v)
			}
			return it.Err()
		case err != nil:
			return fmt.Errorf("read %s: %w", m, err)
		}
	}
}
