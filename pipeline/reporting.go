package pipeline

import (
	"errors"
	"net/netip"
	"path"
	"sync/atomic"

	"github.com/vishvananda/netlink"

	"github.com/flowmap/flowmap/host"
	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/topology"
)

// HostView is this host as the reporting rule and the fallback namer see
// it: its name, the addresses that name it (host.Addrs) and the links of
// its default routes (host.DefaultLinks). Those are looked up by Refresh
// only, never on a flow's way: a flow reads the last look, lock-free. Its
// methods are safe for concurrent use.
type HostView struct {
	name   string
	routes func() ([]netlink.Route, error)
	addrs  func() ([]netip.Addr, error)
	last   atomic.Pointer[hostLook]
}

// hostLook is one look at the host; never changed once stored.
type hostLook struct {
	addrs    []netip.Addr
	own      map[netip.Addr]bool
	defaults map[int]bool
}

// NewHostView returns the view of the host named name whose routes and
// addresses routes and addrs list (nil: host.Routes, host.Addrs). It has
// looked at neither until Refresh.
func NewHostView(name string, routes func() ([]netlink.Route, error), addrs func() ([]netip.Addr, error)) *HostView {
	if routes == nil {
		routes = host.Routes
	}
	if addrs == nil {
		addrs = host.Addrs
	}
	h := &HostView{name: name, routes: routes, addrs: addrs}
	h.last.Store(&hostLook{own: map[netip.Addr]bool{}, defaults: map[int]bool{}})
	return h
}

// Name is the host's name.
func (h *HostView) Name() string { return h.name }

// Refresh looks at the host's routes and addresses again. What it fails to
// list stays as it was last looked at; the errors are returned.
func (h *HostView) Refresh() error {
	prev := h.last.Load()
	next := *prev
	var errs []error
	if routes, err := h.routes(); err != nil {
		errs = append(errs, err)
	} else {
		next.defaults = host.DefaultLinks(routes)
	}
	if addrs, err := h.addrs(); err != nil {
		errs = append(errs, err)
	} else {
		next.addrs = addrs
		next.own = make(map[netip.Addr]bool, len(addrs))
		for _, a := range addrs {
			next.own[a] = true
		}
	}
	h.last.Store(&next)
	return errors.Join(errs...)
}

// Own reports whether a is one of the host's addresses.
func (h *HostView) Own(a netip.Addr) bool { return h.last.Load().own[a.Unmap()] }

// DefaultLink reports whether a default route leaves by the link ifindex.
func (h *HostView) DefaultLink(ifindex int) bool { return h.last.Load().defaults[ifindex] }

// Namer names each end by its address alone, for when no inventory runs:
// the host's own addresses are the host (host.Endpoint), others unknown.
func (h *HostView) Namer() Namer {
	return func(r *model.Record) model.Flow {
		look := h.last.Load()
		end := func(a netip.Addr) model.Endpoint {
			if look.own[a.Unmap()] {
				return host.Endpoint(h.name, look.addrs)
			}
			s := a.String()
			return model.Endpoint{Kind: model.KindUnknown, ID: s, Name: s}
		}
		f := model.Flow{Record: *r, SrcEndpoint: end(r.Src), DstEndpoint: end(r.Dst)}
		if r.Backend.IsValid() {
			f.BackendEndpoint = end(r.Backend.Addr())
		}
		return f
	}
}

// AddrNamer is the Namer of the host named node as it is now (see
// HostView.Namer): its addresses are looked up once.
func AddrNamer(node string) Namer {
	h := NewHostView(node, nil, nil)
	h.Refresh() // an address it fails to list is unknown
	return h.Namer()
}

// Reporting holds what the reporting rule of the flow series needs to know
// of the cluster on this node (see "Reporting once" in package topology):
// which interfaces lead away from the node, and which clients run on
// other nodes.
type Reporting struct {
	// Host is this node; its name tells the inventory's endpoints on
	// other nodes.
	Host *HostView
	// Uplinks are name globs (path.Match) of the interfaces that lead to
	// other nodes and the outside. Nil: vxlan, geneve and physical
	// devices, and the links of the default routes.
	Uplinks []string
	// ClusterCIDRs hold the addresses of the cluster's pods and nodes: a
	// client in them runs elsewhere unless it runs here.
	ClusterCIDRs []netip.Prefix
}

// Ends tells where the ends of f run: an end runs here when it is behind a
// watched interface that is not an uplink, or is one of the host's
// addresses; a client that does not runs elsewhere when it is in
// ClusterCIDRs or the inventory places it on another node.
func (r *Reporting) Ends(f *model.Flow) topology.Ends {
	e := topology.Ends{
		ClientHere: (f.SrcIf.Index != 0 && !r.Uplink(f.SrcIf)) || r.Host.Own(f.Src),
		ServerHere: (f.DstIf.Index != 0 && !r.Uplink(f.DstIf)) || r.Host.Own(f.Dst),
	}
	if e.ClientHere {
		return e
	}
	for _, p := range r.ClusterCIDRs {
		if p.Contains(f.Src) {
			e.ClientElsewhere = true
			return e
		}
	}
	switch ep := &f.SrcEndpoint; ep.Kind {
	case model.KindPod, model.KindContainer, model.KindHost:
		e.ClientElsewhere = ep.Node != "" && ep.Node != r.Host.Name()
	}
	return e
}

// Uplink reports whether i leads to other nodes and the outside: its name
// matches Uplinks, or without Uplinks it is a vxlan, geneve or physical
// device or a default route leaves by it.
func (r *Reporting) Uplink(i model.Interface) bool {
	if len(r.Uplinks) > 0 {
		for _, g := range r.Uplinks {
			if ok, _ := path.Match(g, i.Name); ok {
				return true
			}
		}
		return false
	}
	switch i.Kind {
	case "vxlan", "geneve", "device":
		return true
	}
	return r.Host.DefaultLink(i.Index)
}
