package flows

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
)

// TestResubscribe fails the first subscription to link events after a
// link was made that it never reported: Run must go on, subscribe again,
// list the links again and attach to the one it missed.
func TestResubscribe(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	d, err := New(Config{Interfaces: []string{"fmrs*"}, Interval: time.Hour})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	inject := make(chan error, 1)
	var calls atomic.Int32
	d.subscribe = func(done <-chan struct{}) (events, error) {
		if calls.Add(1) > 1 {
			return subscribe(done)
		}
		// A subscription that reports nothing and fails when told.
		return events{links: make(chan netlink.LinkUpdate), routes: make(chan netlink.RouteUpdate), errs: inject}, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan model.Batch, 1)
	ran := make(chan error, 1)
	go func() { ran <- d.Run(ctx, out) }()
	t.Cleanup(func() {
		cancel()
		if err := <-ran; !errors.Is(err, context.Canceled) {
			t.Errorf("Run = %v, want context.Canceled", err)
		}
	})
	for d.Ready() != nil {
		select {
		case err := <-ran:
			t.Fatalf("Run = %v before it was ready", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	l := &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: "fmrs0"}}
	if err := netlink.LinkAdd(l); err != nil {
		t.Fatalf("add ifb fmrs0: %v", err)
	}
	t.Cleanup(func() {
		if err := netlink.LinkDel(l); err != nil {
			t.Errorf("delete fmrs0: %v", err)
		}
	})
	if got := len(d.Attached()); got != 0 {
		t.Fatalf("%d interfaces attached before the subscription failed, want 0: it reports nothing", got)
	}
	inject <- unix.ENOBUFS
	deadline := time.After(10 * time.Second)
	for len(d.Attached()) != 1 {
		select {
		case err := <-ran:
			t.Fatalf("Run = %v after a failed subscription, want it to go on", err)
		case <-deadline:
			t.Fatalf("fmrs0 not attached within 10s of the failed subscription: %d subscriptions made", calls.Load())
		case <-time.After(10 * time.Millisecond):
		}
	}
	if got := d.Stats().Resubscribes; got != 1 {
		t.Errorf("Stats().Resubscribes = %d, want 1", got)
	}
	// The new subscription reports what comes next.
	if err := netlink.LinkDel(l); err != nil {
		t.Fatalf("delete fmrs0: %v", err)
	}
	l = &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: "fmrs1"}}
	if err := netlink.LinkAdd(l); err != nil {
		t.Fatalf("add ifb fmrs1: %v", err)
	}
	deadline = time.After(10 * time.Second)
	for a := d.Attached(); len(a) != 1 || a[0].Name != "fmrs1"; a = d.Attached() {
		select {
		case <-deadline:
			t.Fatalf("attached %v 10s after fmrs0 was replaced by fmrs1, want fmrs1", a)
		case <-time.After(10 * time.Millisecond):
		}
	}
}
