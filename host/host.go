// Package host holds what flowmap asks of the machine it runs on, each
// decided in one place for every stage that asks: its name in the cluster
// (Name), the endpoint it is (Endpoint), the addresses that name it (Addrs,
// AddrsOf), the links its default routes leave by (Routes, DefaultLinks),
// and its links' and routes' events (SubscribeLinks, SubscribeRoutes). It sits below flows and enrich,
// which both read the host, and imports only model of the project.
package host

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flowmap/flowmap/model"
)

// Name returns this machine's name in the cluster: $NODE_NAME (a
// Kubernetes DaemonSet sets it from spec.nodeName, which need not be the
// host name), else the host name, else "".
func Name() string {
	return nameFrom(os.Getenv, os.Hostname)
}

func nameFrom(getenv func(string) string, hostname func() (string, error)) string {
	if n := getenv("NODE_NAME"); n != "" {
		return n
	}
	n, _ := hostname()
	return n
}

// Endpoint is this machine, named name, with the addresses addrs: the
// same endpoint whichever stage names it, so that the inventory's host,
// the fallback by address and a Kubernetes Node of that name join.
func Endpoint(name string, addrs []netip.Addr) model.Endpoint {
	return model.Endpoint{Kind: model.KindHost, ID: name, Name: name, Node: name, Addrs: addrs}
}

// AddrsOf returns the addresses of list that name a machine: not
// loopback, link-local, unspecified or multicast, which every network
// namespace may have the same of (169.254.1.1 is every Calico pod's
// gateway).
func AddrsOf(list []netlink.Addr) []netip.Addr {
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

// Addrs returns the addresses that name this machine (see AddrsOf): those
// of the caller's network namespace.
func Addrs() ([]netip.Addr, error) {
	list, err := Dump(func() ([]netlink.Addr, error) { return netlink.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	return AddrsOf(list), nil
}

// Routes returns the routes of the main table, IPv4 and IPv6, of the
// caller's network namespace.
func Routes() ([]netlink.Route, error) {
	routes, err := Dump(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	return routes, nil
}

// DefaultLinks returns the ifindexes of the links that the default routes
// among routes leave by, IPv4 and IPv6, with every next hop of a multipath
// route: the links towards other nodes and the outside.
func DefaultLinks(routes []netlink.Route) map[int]bool {
	links := map[int]bool{}
	for _, r := range routes {
		// netlink gives a default route as 0.0.0.0/0 or ::/0, nil before
		// v1.2; 0.0.0.0/8 is no default route.
		if !IsDefault(&r) {
			continue
		}
		if r.LinkIndex > 0 {
			links[r.LinkIndex] = true
		}
		for _, nh := range r.MultiPath {
			if nh.LinkIndex > 0 {
				links[nh.LinkIndex] = true
			}
		}
	}
	return links
}

// SubscribeLinks subscribes to the host's netlink link events until done
// is closed: the events come on updates; the subscription's first error,
// after which no more come, on errs.
func SubscribeLinks(done <-chan struct{}) (updates <-chan netlink.LinkUpdate, errs <-chan error, err error) {
	up := make(chan netlink.LinkUpdate, 256)
	subErr := make(chan error, 1)
	err = netlink.LinkSubscribeWithOptions(up, done, netlink.LinkSubscribeOptions{
		ErrorCallback: func(err error) {
			select {
			case subErr <- err:
			default:
			}
		},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("subscribe to link events: %w", err)
	}
	return up, subErr, nil
}

// SubscribeRoutes subscribes to the host's netlink route events until
// done is closed, as SubscribeLinks does to link events.
func SubscribeRoutes(done <-chan struct{}) (updates <-chan netlink.RouteUpdate, errs <-chan error, err error) {
	up := make(chan netlink.RouteUpdate, 256)
	subErr := make(chan error, 1)
	err = netlink.RouteSubscribeWithOptions(up, done, netlink.RouteSubscribeOptions{
		ErrorCallback: func(err error) {
			select {
			case subErr <- err:
			default:
			}
		},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("subscribe to route events: %w", err)
	}
	return up, subErr, nil
}

// IsDefault reports whether r is a default route, IPv4 or IPv6 (see
// DefaultLinks).
func IsDefault(r *netlink.Route) bool {
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0
}

// Dump retries a netlink dump that the kernel interrupted because what it
// lists changed meanwhile (links, addresses and routes come and go with
// containers): the partial answer may miss what we look for.
func Dump[T any](f func() ([]T, error)) ([]T, error) {
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
