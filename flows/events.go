package flows

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flowmap/flowmap/host"
)

// The backoff between two subscriptions to link and route events after
// one failed: it doubles from the first to the last, and starts again from
// the first once a subscription lasted the last.
const (
	resubscribeMin = 100 * time.Millisecond
	resubscribeMax = 10 * time.Second
)

// events is one subscription to the host's link and route events. Once it
// fails (ENOBUFS when events came faster than they were read, or any other
// error of the netlink socket), no more come: errs has the error, and the
// links or routes channel may be closed.
type events struct {
	links  <-chan netlink.LinkUpdate
	routes <-chan netlink.RouteUpdate
	errs   <-chan error
}

// subscribe subscribes to the host's link and route events until done is
// closed.
func subscribe(done <-chan struct{}) (events, error) {
	links, linkErrs, err := host.SubscribeLinks(done)
	if err != nil {
		return events{}, err
	}
	routes, routeErrs, err := host.SubscribeRoutes(done)
	if err != nil {
		return events{}, err
	}
	errs := make(chan error, 1)
	go func() {
		var err error
		select {
		case err = <-linkErrs:
		case err = <-routeErrs:
		case <-done:
			return
		}
		errs <- err
	}()
	return events{links: links, routes: routes, errs: errs}, nil
}

// follow subscribes to link and route events, lists the links, attaches
// to those the config covers and releases those that vanished; then it
// follows the events until ctx is done. A subscription that fails is
// logged, counted in Stats.Resubscribes and made again, with the links
// listed again for what it missed, after a backoff: the agent never stops
// for it. ready is closed after the first listing, or gets its error.
func (d *Datapath) follow(ctx context.Context, ready chan<- error) {
	backoff := resubscribeMin
	first, started := true, false
	for {
		since := time.Now()
		err := d.followOnce(ctx, func(err error) {
			if first {
				first, started = false, err == nil
				ready <- err
			}
		})
		if ctx.Err() != nil || !started {
			// The first subscription's error is Run's.
			return
		}
		if time.Since(since) >= resubscribeMax {
			backoff = resubscribeMin
		}
		d.count(func(s *Stats) { s.Resubscribes++ })
		d.log.Warn("link and route events lost: subscribing again and listing links", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, resubscribeMax)
	}
}

// followOnce is one subscription of follow: it returns why it ended.
// listed is called once the links are listed, with the error if they could
// not be.
func (d *Datapath) followOnce(ctx context.Context, listed func(error)) error {
	done := make(chan struct{})
	defer close(done)
	ev, err := d.subscribe(done)
	if err != nil {
		listed(err)
		return err
	}
	// Subscribed first, listed second: a link made in between is in both,
	// and update is idempotent.
	if err := d.relist(); err != nil {
		listed(err)
		return err
	}
	listed(nil)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-ev.errs:
			return err
		case u, ok := <-ev.links:
			if !ok {
				return errors.New("link events: subscription closed")
			}
			d.update(u, d.defaultLinks())
		case r, ok := <-ev.routes:
			if !ok {
				return errors.New("route events: subscription closed")
			}
			if r.Type == unix.RTM_NEWROUTE && host.IsDefault(&r.Route) {
				d.newDefaultRoute()
			}
		}
	}
}

// relist reads the default routes again, attaches to every link the
// config covers, and releases the attached links that no longer exist: it
// makes up for the events a failed subscription lost.
func (d *Datapath) relist() error {
	d.readDefaultLinks()
	links, err := host.Dump(netlink.LinkList)
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	present := make(map[int]bool, len(links))
	def := d.defaultLinks()
	for _, l := range links {
		present[l.Attrs().Index] = true
		d.update(netlink.LinkUpdate{Header: unix.NlMsghdr{Type: unix.RTM_NEWLINK}, Link: l}, def)
	}
	d.regMu.Lock()
	defer d.regMu.Unlock()
	for idx, a := range d.attached {
		if present[idx] || d.closed {
			continue
		}
		if err := d.releaseLocked(idx); err != nil {
			d.log.Debug("release vanished interface", "ifname", a.iface.Name, "err", err)
		}
		d.log.Info("released vanished interface", "ifname", a.iface.Name, "ifindex", idx)
	}
	return nil
}

// newDefaultRoute attaches to the links of the default routes that were
// not: a NIC that became a default route's after the start. A link that
// stops being one stays attached until it goes.
func (d *Datapath) newDefaultRoute() {
	d.readDefaultLinks()
	def := d.defaultLinks()
	for idx := range def {
		d.regMu.Lock()
		_, ok := d.attached[idx]
		d.regMu.Unlock()
		if ok {
			continue
		}
		l, err := netlink.LinkByIndex(idx)
		if err != nil {
			d.log.Debug("find a default route's link", "ifindex", idx, "err", err)
			continue
		}
		d.update(netlink.LinkUpdate{Header: unix.NlMsghdr{Type: unix.RTM_NEWLINK}, Link: l}, def)
	}
}

// readDefaultLinks reads the links of the default routes again; on an
// error it keeps those it had.
func (d *Datapath) readDefaultLinks() {
	routes, err := d.routes()
	if err != nil {
		d.log.Warn("find default routes", "err", err)
		return
	}
	def := host.DefaultLinks(routes)
	d.regMu.Lock()
	d.defRoutes = def
	d.regMu.Unlock()
}

// defaultLinks returns the links of the default routes, last read.
func (d *Datapath) defaultLinks() map[int]bool {
	d.regMu.Lock()
	defer d.regMu.Unlock()
	return d.defRoutes
}
