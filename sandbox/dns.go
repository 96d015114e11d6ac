package sandbox

import (
	"context"
	"net"
	"net/netip"
)

// Resolver returns a resolver that asks server from h.
func (h *Host) Resolver(server netip.AddrPort) *net.Resolver {
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return h.DialContext(ctx, network, server.String())
		},
	}
}
