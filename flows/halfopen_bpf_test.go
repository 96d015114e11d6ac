package flows

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"

	"github.com/flowmap/flowmap/internal/testenv"
)

// TestBPFSYNFlood: 100,000 SYNs from random sources to one server fill the
// half-open map and not the flow maps; a real connection to that server
// afterwards is counted exactly, its SYN included, and nothing is refused
// as map-full; the attempts the LRU evicted are what the counters say.
func TestBPFSYNFlood(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	const (
		flood    = 100_000
		maxFlows = 65536
	)
	objs := loadTestObjects(t, maxFlows)
	resetObjects(t, objs)
	hooks := testHooks(t, objs)
	ingress, egress := hooks[0], hooks[1]

	// The flood: SYNs from random addresses of 198.18.0.0/15 and ports.
	tmpl := pathTCP(0, true, tcpSYN, nil)
	rng := rand.New(rand.NewPCG(1, 2))
	frame := make([]byte, len(tmpl))
	for range flood {
		copy(frame, tmpl)
		src := rng.Uint32()&0x1ffff | 198<<24 | 18<<16
		binary.BigEndian.PutUint32(frame[14+12:], src)
		binary.BigEndian.PutUint16(frame[14+20:], uint16(1024+rng.IntN(60000)))
		if _, err := objs.TcIngress.Run(&ebpf.RunOptions{Data: frame}); err != nil {
			t.Fatalf("flood: %v", err)
		}
	}
	if n := countKeys[bpfFlowKey4](t, objs.Flows4A); n != 0 {
		t.Errorf("after the flood the flow map holds %d entries, want none", n)
	}
	if n, max := countKeys[bpfFlowKey](t, objs.HalfOpen), int(objs.HalfOpen.MaxEntries()); n == 0 || n > max {
		t.Errorf("after the flood half_open holds %d entries, want 1 to %d", n, max)
	}

	// A real connection to the flooded server.
	const cli, srv = "198.51.100.2", "203.0.113.80"
	tcp := func(src, dst string, sport, dport, flags uint16, payload int) []byte {
		if payload > 0 {
			return buildFrame(t, ethL(layers.EthernetTypeIPv4), ip4L(src, dst, layers.IPProtocolTCP), tcpL(sport, dport, flags), payloadL(payload))
		}
		return buildFrame(t, ethL(layers.EthernetTypeIPv4), ip4L(src, dst, layers.IPProtocolTCP), tcpL(sport, dport, flags))
	}
	c2s := []struct {
		h     hook
		frame []byte
		flags uint16
	}{
		{ingress, tcp(cli, srv, 45000, 80, hdrSYN, 0), hdrSYN},
		{ingress, tcp(cli, srv, 45000, 80, hdrACK, 0), hdrACK},
		{ingress, tcp(cli, srv, 45000, 80, hdrACK|hdrPSH, 300), hdrACK | hdrPSH},
		{ingress, tcp(cli, srv, 45000, 80, hdrACK, 0), hdrACK},
		{ingress, tcp(cli, srv, 45000, 80, hdrFIN|hdrACK, 0), hdrFIN | hdrACK},
	}
	s2c := []struct {
		h     hook
		frame []byte
		flags uint16
	}{
		{egress, tcp(srv, cli, 80, 45000, hdrSYN|hdrACK, 0), hdrSYN | hdrACK},
		{egress, tcp(srv, cli, 80, 45000, hdrACK|hdrPSH, 1400), hdrACK | hdrPSH},
		{egress, tcp(srv, cli, 80, 45000, hdrFIN|hdrACK, 0), hdrFIN | hdrACK},
	}
	// Interleaved as a connection goes: SYN, SYN-ACK, ACK, request,
	// response, ACK, FIN, FIN.
	order := []struct {
		c2s bool
		i   int
	}{{true, 0}, {false, 0}, {true, 1}, {true, 2}, {false, 1}, {true, 3}, {true, 4}, {false, 2}}
	var want [2]flowSum
	var flags [2][]uint16
	for _, o := range order {
		d, s := 0, c2s
		if !o.c2s {
			d, s = 1, s2c
		}
		st := s[o.i]
		st.h.run(t, st.frame)
		want[d].Bytes += uint64(len(st.frame))
		want[d].Packets++
		flags[d] = append(flags[d], st.flags)
	}
	ck := flowKey(cli, srv, 45000, 80, layers.IPProtocolTCP, 0)
	sk := flowKey(srv, cli, 80, 45000, layers.IPProtocolTCP, 0)
	got := sumFlows(t, halfA(objs))
	for d, k := range []bpfFlowKey{ck, sk} {
		g := got[k]
		if g.Bytes != want[d].Bytes || g.Packets != want[d].Packets || g.TCPFlags != segFlags(flags[d]...) {
			t.Errorf("%s: %d bytes, %d packets, flags %#x; want %d, %d, %#x", keyString(k), g.Bytes, g.Packets, g.TCPFlags,
				want[d].Bytes, want[d].Packets, segFlags(flags[d]...))
		}
	}
	if got[sk].SynRTT == 0 {
		t.Errorf("%s: no handshake RTT", keyString(sk))
	}
	if len(got) != 2 {
		t.Errorf("the flow map holds %d directions, want the connection's 2", len(got))
	}
	c := sumCounters(t, objs)
	if c[bpfCounterCOUNTER_MAP_FULL_PACKETS] != 0 {
		t.Errorf("map-full packets %d, want 0", c[bpfCounterCOUNTER_MAP_FULL_PACKETS])
	}
	if g, w := c[bpfCounterCOUNTER_HALF_OPEN_NEW], uint64(flood+1); g > w || g < w-100 {
		// Random tuples may repeat: a few SYNs are then retries.
		t.Errorf("half-open attempts %d, want about %d", g, w)
	}
	// The flood's SYNs, the connection's SYN and its SYN-ACK.
	if g := c[bpfCounterCOUNTER_HALF_OPEN_PACKETS]; g != flood+2 {
		t.Errorf("half-open packets %d, want %d", g, flood+2)
	}
	if g := c[bpfCounterCOUNTER_HALF_OPEN_PROMOTED]; g != 1 {
		t.Errorf("half-open attempts promoted %d, want 1", g)
	}
	h := sumAllHealth(t, objs, false)
	if h[ck].Syns != 1 || h[sk].Accepts != 1 {
		t.Errorf("health %v / %v, want the connection's SYN and its accept", h[ck], h[sk])
	}
	// What the LRU evicted: every attempt is promoted, waiting or evicted
	// (no drain took any).
	waiting := uint64(countKeys[bpfFlowKey](t, objs.HalfOpen))
	ho := newHalfOpenState(objs.HalfOpen)
	ho.waiting = waiting
	st := ho.stats(c)
	if st.Evicted == 0 || st.Evicted+st.Promoted+waiting != st.Attempts {
		t.Errorf("half-open %+v with %d waiting, want the flood's overflow evicted", st, waiting)
	}
}

// countKeys counts the entries of a hash map.
func countKeys[K any](t testing.TB, m *ebpf.Map) int {
	t.Helper()
	n := 0
	var k K
	var v []byte
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatalf("iterate %v: %v", m, err)
	}
	return n
}
