package topology

import (
	"net/netip"

	"github.com/flowmap/flowmap/model"
)

// # Services and other translated addresses
//
// A flow whose server the host translated (model.Record.Backend: a
// Service's ClusterIP or NodePort, a published port) is two edges: the
// client to what it dialled (DstEndpoint, a Service or the node) on the
// dialled port, and what it dialled to the backend that answered
// (BackendEndpoint) on the backend's port, each with the flow's counts.
// So a Service's edges to its backends split its clients' bytes by
// backend. Summing every edge of a graph counts such a flow twice; the
// edges into Service nodes, or out of them, count it once. A Service is
// its own node at every level: it is no pod's, workload's, namespace's
// member, nor any host's.

// backendHop returns the flow's second edge: from what the client dialled
// to the backend that answered, on the backend's port, with the flow's
// counts, its client's address and interface (so the reporting rule reads
// it as the flow). ok is false for a flow without a backend, or whose
// backend is named as what was dialled.
func backendHop(f *model.Flow) (h model.Flow, ok bool) {
	if !f.Backend.IsValid() || (f.BackendEndpoint.Kind == f.DstEndpoint.Kind && f.BackendEndpoint.ID == f.DstEndpoint.ID) {
		return model.Flow{}, false
	}
	h = *f
	h.SrcEndpoint, h.DstEndpoint, h.BackendEndpoint = f.DstEndpoint, f.BackendEndpoint, model.Endpoint{}
	h.Dst, h.DstPort, h.Backend = f.Backend.Addr(), f.Backend.Port(), netip.AddrPort{}
	return h, true
}
