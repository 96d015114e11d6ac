package flows_test

import (
	"context"
	"testing"
	"time"

	"github.com/flowmap/flowmap/flows"
	"github.com/flowmap/flowmap/internal/sandboxtest"
	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/sandbox"
)

// TestEndToEndSYNFlood: while one namespace floods another with SYNs from
// random sources (hping3 --flood --rand-source), a TCP transfer of a few
// MB between two other namespaces is counted within 1%, nothing is
// refused as map-full, and the flood's attempts are held apart from the
// flow maps (half-open), those the LRU evicted counted.
func TestEndToEndSYNFlood(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	hping := testenv.MustHaveCommand(t, "hping3")
	if err := sandbox.Cleanup("fmho"); err != nil {
		t.Fatalf("remove leftovers: %v", err)
	}
	sb := sandboxtest.New(t, sandbox.Options{Prefix: "fmho", Subnet: e2eSubnet})
	atk := mustHost(t, sb, "atk")
	victim := mustHost(t, sb, "victim")
	a := mustHost(t, sb, "a")
	b := mustHost(t, sb, "b")
	// The victim answers nothing: its replies to the random sources would
	// otherwise leave through the host's default route.
	if out, err := victim.Command(context.Background(), "ip", "route", "replace", "blackhole", "default").CombinedOutput(); err != nil {
		t.Fatalf("blackhole the victim's default route: %v: %s", err, out)
	}
	c := runDatapath(t, flows.Config{Interfaces: []string{"fmho-*"}, Interval: time.Second})

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	flood := atk.Command(ctx, hping, "--flood", "--rand-source", "-S", "-p", "80", victim.Addr.String())
	if err := flood.Start(); err != nil {
		t.Fatalf("start hping3: %v", err)
	}
	floodDone := make(chan error, 1)
	go func() { floodDone <- flood.Wait() }()
	defer func() { stop(); <-floodDone }()
	// The flood is on once the half-open map has seen its attempts.
	waitFor(t, 10*time.Second, "the flood's attempts", func() bool { return c.dp.Stats().HalfOpen.Attempts > 10_000 })

	const n = 4<<20 + 12345
	port, retrans := sendTCP(t, a.Dial, b, b.Addr, n)
	// A second of flood after the transfer, so that its drains happen
	// under the flood too.
	before := c.dp.Stats().Drains
	waitFor(t, 5*time.Second, "a drain under the flood", func() bool { return c.dp.Stats().Drains > before+1 })
	stop()
	<-floodDone
	floodDone <- nil

	recs := c.flows(t)
	r := one(t, find(recs, a.Addr, b.Addr, model.ProtoTCP, port))
	sent := n + retrans
	if want := sent + r.Forward.Packets*tcp4Overhead; !within(r.Forward.Bytes, want, 0.01) {
		t.Errorf("forward bytes = %d, want %d ±1%% (%d payload, %d retransmitted, %d packets × %d)",
			r.Forward.Bytes, want, n, retrans, r.Forward.Packets, tcp4Overhead)
	}
	if r.Forward.TCPFlags&0x03 != 0x03 || r.Reverse.TCPFlags&0x12 != 0x12 {
		t.Errorf("tcp flags = %#x forward, %#x reverse; want SYN and FIN forward, SYN-ACK reverse", r.Forward.TCPFlags, r.Reverse.TCPFlags)
	}
	if r.Health == nil || r.Health.Attempts != 1 || r.Health.Established != 1 {
		t.Errorf("health %+v, want 1 attempt, 1 established", r.Health)
	}
	s := c.dp.Stats()
	if s.MapFullPackets != 0 {
		t.Errorf("map-full packets %d, want 0: the flood crowded the flow map", s.MapFullPackets)
	}
	h := s.HalfOpen
	t.Logf("half-open: %d attempts (%d SYNs), %d promoted, %d taken, %d waiting, %d evicted (%d packets); %d flows drained",
		h.Attempts, h.Packets, h.Promoted, h.Taken, h.Waiting, h.Evicted, h.EvictedPkts, s.Flows)
	if h.Promoted < 1 {
		t.Errorf("half-open promoted %d, want the transfer's", h.Promoted)
	}
	if h.Evicted == 0 || h.EvictedPkts < h.Evicted {
		t.Errorf("half-open evicted %d attempts, %d packets; want the flood's overflow counted", h.Evicted, h.EvictedPkts)
	}
}
