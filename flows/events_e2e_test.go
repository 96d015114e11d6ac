package flows_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/flowmap/flowmap/flows"
	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
)

// addIfb adds an ifb link named name, up, and deletes it when t ends: a
// link that needs no peer and no module beyond ifb, as a NIC would be.
func addIfb(t *testing.T, name string) netlink.Link {
	t.Helper()
	l := &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := netlink.LinkAdd(l); err != nil {
		t.Fatalf("add ifb %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := netlink.LinkDel(l); err != nil {
			t.Errorf("delete %s: %v", name, err)
		}
	})
	if err := netlink.LinkSetUp(l); err != nil {
		t.Fatalf("set %s up: %v", name, err)
	}
	return l
}

// attachedNamed returns how many of dp's interfaces are named with prefix.
func attachedNamed(dp *flows.Datapath, prefix string) int {
	n := 0
	for _, i := range dp.Attached() {
		if strings.HasPrefix(i.Name, prefix) {
			n++
		}
	}
	return n
}

// TestDefaultRouteLater checks that the default config watches a link
// that becomes a default route's after the start. The route has a metric
// far above the host's own, so that it carries nothing meanwhile.
func TestDefaultRouteLater(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	l := addIfb(t, "fmdr0")
	c := runDatapath(t, flows.Config{})
	if n := attachedNamed(c.dp, "fmdr0"); n != 0 {
		t.Fatalf("fmdr0 attached before it was a default route's link, want it left alone")
	}
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, Priority: 4000}
	if err := netlink.RouteAdd(r); err != nil {
		t.Fatalf("add default route by fmdr0: %v", err)
	}
	t.Cleanup(func() {
		if err := netlink.RouteDel(r); err != nil && !errors.Is(err, net.ErrClosed) {
			t.Logf("delete default route by fmdr0: %v (gone with the link)", err)
		}
	})
	waitFor(t, 5*time.Second, "fmdr0 attached once it is a default route's link", func() bool {
		return attachedNamed(c.dp, "fmdr0") == 1
	})
}

// TestLinkEventsOverrun makes link events faster than they are read,
// while the batches are not read either: the netlink socket overruns
// (ENOBUFS) and the agent must neither stop nor miss a link.
func TestLinkEventsOverrun(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	const links = 500
	dp, err := flows.New(flows.Config{Interfaces: []string{"fmov*"}, Interval: 100 * time.Millisecond})
	if err != nil {
		t.Fatalf("flows.New: %v", err)
	}
	t.Cleanup(func() {
		if err := dp.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan model.Batch)
	done := make(chan error, 1)
	go func() { done <- dp.Run(ctx, out) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run = %v, want context.Canceled", err)
		}
	})
	waitFor(t, 5*time.Second, "datapath ready", func() bool { return dp.Ready() == nil })
	// One batch read: the loop runs, and its next batch waits for a
	// reader that is not there until the links are made.
	select {
	case <-out:
	case <-time.After(5 * time.Second):
		t.Fatal("no batch within 5s")
	}
	for i := range links {
		addIfb(t, fmt.Sprintf("fmov%d", i))
	}
	go func() {
		for {
			select {
			case <-out:
			case <-ctx.Done():
				return
			}
		}
	}()
	waitFor(t, 30*time.Second, fmt.Sprintf("%d links attached", links), func() bool {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("Run ended with %v while links were made, want it to go on", err)
		default:
		}
		return attachedNamed(dp, "fmov") == links
	})
	t.Logf("subscriptions made again: %d", dp.Stats().Resubscribes)
}
