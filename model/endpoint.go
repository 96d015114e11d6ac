package model

import "net/netip"

// Kind is what an endpoint is.
type EndpointKind string

// The kinds of endpoint.
const (
	KindContainer EndpointKind = "container"
	KindPod       EndpointKind = "pod"
	KindHost      EndpointKind = "host"
	KindService   EndpointKind = "service"
	KindExternal  EndpointKind = "external"
	KindUnknown   EndpointKind = "unknown"
	// KindNetNS is a network namespace in which no source found a
	// container: one made by `ip netns add`, or by a runtime no source
	// knows. Its Name is the namespace's name under /run/netns, if any.
	KindNetNS EndpointKind = "netns"
)

// Endpoint is one end of a flow, as the inventory knows it. Endpoints that
// the inventory hands out share their Labels and Addrs with its caches:
// callers must not modify them.
type Endpoint struct {
	Kind EndpointKind `json:"kind"`
	// ID is stable for the endpoint's life: a container id, a pod UID, a
	// host name, a CIDR, or the address itself for an unknown one.
	ID   string `json:"id"`
	Name string `json:"name"`
	// Namespace is the Kubernetes namespace, where there is one.
	Namespace string `json:"namespace,omitempty"`
	// Workload owns the endpoint (a Deployment, StatefulSet, DaemonSet,
	// Job, CronJob, or a compose service), of WorkloadKind.
	Workload     string            `json:"workload,omitempty"`
	WorkloadKind string            `json:"workload_kind,omitempty"`
	Node         string            `json:"node,omitempty"`
	Labels       map[string]string `json:"labels,omitempty"`
	Image        string            `json:"image,omitempty"`
	// NetNS and PIDNS are the inode numbers of the endpoint's network and
	// PID namespaces, where known.
	NetNS uint64       `json:"netns,omitempty"`
	PIDNS uint64       `json:"pidns,omitempty"`
	Addrs []netip.Addr `json:"addrs,omitempty"`
	// Source is the inventory source that named the endpoint.
	Source string `json:"source,omitempty"`
	// NameSource says what Name rests on where traffic named the
	// endpoint: NameSourceDNS (an answer to a local client's query) or
	// NameSourceTLSSNI (a client's claim in its ClientHello, which no
	// server confirmed); "" where an inventory source named it.
	NameSource string `json:"name_source,omitempty"`
}

// The name sources of an endpoint that traffic named (Endpoint.NameSource).
const (
	NameSourceDNS    = "dns"
	NameSourceTLSSNI = "tls-sni"
)

// Flow is a flow record with both ends named.
type Flow struct {
	Record
	SrcEndpoint Endpoint `json:"src_endpoint"`
	DstEndpoint Endpoint `json:"dst_endpoint"`
	// BackendEndpoint is who is behind Record.Backend, where the record
	// has one: DstEndpoint is then what the client dialled (a Service).
	BackendEndpoint Endpoint `json:"backend_endpoint,omitzero"`
}
