package flows

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/flowmap/flowmap/internal/sandboxtest"
	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/sandbox"
)

// TestAttachCountsOnce sends a datagram from a new interface's namespace
// to a watched one while the new interface is half attached (its ingress
// program in place, its egress not yet): the datagram is counted once, at
// that ingress, not again at the egress of the interface it leaves by.
// The agent's churn soak test, whose transfers start as their veth
// appears, counted whole transfers twice so before the attachment marked
// the interface watched first.
func TestAttachCountsOnce(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	const prefix = "fmao"
	if err := sandbox.Cleanup(prefix); err != nil {
		t.Fatal(err)
	}
	sb := sandboxtest.New(t, sandbox.Options{Prefix: prefix, Subnet: netip.MustParsePrefix("203.0.113.128/25")})
	b, err := sb.AddHost("b")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := b.ListenPacket("udp4", net.JoinHostPort(b.Addr.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	port := uint16(pc.LocalAddr().(*net.UDPAddr).Port)

	d, err := New(Config{Interfaces: []string{prefix + "-*"}, Interval: time.Hour})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	// The hook runs in the link event's goroutine, before a exists for
	// the test: it gets a from the test, once AddHost returned it.
	hosts := make(chan *sandbox.Host, 1)
	sent := make(chan error, 1)
	d.afterIngress = func(i model.Interface) {
		if i.Name != prefix+"-a" {
			return
		}
		a := <-hosts
		sent <- sendOne(a, pc)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, make(chan model.Batch, 1)) }()
	defer func() {
		cancel()
		<-done
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for d.Ready() != nil || !attached(d, b.HostIfIndex) {
		if time.Now().After(deadline) {
			t.Fatalf("%s not attached after 5s", b.HostIf)
		}
		time.Sleep(20 * time.Millisecond)
	}
	a, err := sb.AddHost("a")
	if err != nil {
		t.Fatal(err)
	}
	hosts <- a
	select {
	case err := <-sent:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s not attached 10s after it appeared", a.HostIf)
	}
	batch, err := d.Drain(time.Now())
	if err != nil {
		t.Fatalf("Drain: %v", err)
	}
	var packets uint64
	var points []model.Point
	for _, r := range batch.Records {
		if r.Proto == model.ProtoUDP && r.Src == a.Addr && r.Dst == b.Addr && r.DstPort == port {
			packets += r.Forward.Packets
			points = append(points, r.Forward.Point)
		}
	}
	if packets != 1 {
		t.Errorf("the datagram sent while %s was half attached counted %d times (at %v), want once", a.HostIf, packets, points)
	}
}

// sendOne sends a datagram from a to pc and waits until pc has it.
func sendOne(a *sandbox.Host, pc net.PacketConn) error {
	c, err := a.Dial("udp4", pc.LocalAddr().String())
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		return err
	}
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err = pc.ReadFrom(make([]byte, 16))
	return err
}

// attached reports whether d has programs on ifindex.
func attached(d *Datapath, ifindex int) bool {
	for _, i := range d.Attached() {
		if i.Index == ifindex {
			return true
		}
	}
	return false
}
