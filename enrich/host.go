package enrich

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/flowmap/flowmap/model"
)

// hostSource names this machine's own addresses: those of the agent's
// network namespace, followed through netlink address events.
type hostSource struct{}

func (h *hostSource) run(ctx context.Context, s *sourceState) error {
	for attempt := 0; ; attempt++ {
		err := h.follow(ctx, s)
		if ctx.Err() != nil {
			return nil
		}
		s.fail("netlink", err)
		if !backoff(ctx, attempt) {
			return nil
		}
	}
}

func (h *hostSource) follow(ctx context.Context, s *sourceState) error {
	updates := make(chan netlink.AddrUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.AddrSubscribe(updates, done); err != nil {
		return fmt.Errorf("subscribe to address events: %w", err)
	}
	tick := time.NewTicker(s.inv.cfg.Resync)
	defer tick.Stop()
	for {
		rec, err := hostRecord()
		if err != nil {
			return err
		}
		s.publish([]record{rec})
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-updates:
			if !ok {
				return fmt.Errorf("address events: subscription closed")
			}
			// Take the rest of a burst (an interface coming up brings
			// several) before looking again.
			for drained := false; !drained; {
				select {
				case <-updates:
				default:
					drained = true
				}
			}
		case <-tick.C:
		}
	}
}

// hostRecord is this machine: its name and the addresses of its
// namespace, bar loopback and link-local ones, which every machine has.
func hostRecord() (record, error) {
	name, err := os.Hostname()
	if err != nil {
		return record{}, fmt.Errorf("get host name: %w", err)
	}
	list, err := dump(func() ([]netlink.Addr, error) { return netlink.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return record{}, fmt.Errorf("list addresses: %w", err)
	}
	ep := model.Endpoint{Kind: model.KindHost, ID: name, Name: name, Addrs: ownAddrs(list)}
	return record{ep: ep, keys: []joinKey{hostKey()}}, nil
}

// ownAddrs are the addresses of list that name an endpoint: not loopback,
// not link-local (each namespace may have the same ones).
func ownAddrs(list []netlink.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range list {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsUnspecified() || ip.IsMulticast() {
			continue
		}
		out = append(out, ip)
	}
	return out
}

// dump retries a netlink dump that the kernel interrupted because what it
// lists changed meanwhile (links and addresses come and go with
// containers): the partial answer may miss what we look for.
func dump[T any](f func() ([]T, error)) ([]T, error) {
	var list []T
	var err error
	for range 5 {
		list, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return list, err
		}
	}
	return list, err
}
