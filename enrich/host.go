package enrich

import (
	"context"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/flowmap/flowmap/host"
)

// hostSource names this machine's own addresses: those of the agent's
// network namespace, followed through netlink address events, as the
// endpoint host.Endpoint of Config.Node.
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
		rec, err := hostRecord(s.inv.cfg.Node)
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

// hostRecord is this machine, named name, with the addresses of its
// namespace that name it (see host.AddrsOf).
func hostRecord(name string) (record, error) {
	addrs, err := host.Addrs()
	if err != nil {
		return record{}, err
	}
	return record{ep: host.Endpoint(name, addrs), keys: []joinKey{hostKey()}}, nil
}
