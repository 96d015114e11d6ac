package topology

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"time"

	"github.com/flowmap/flowmap/model"
)

// Version is the version of the JSON document, raised when a field changes
// meaning or goes away (not when one is added).
const Version = 2

// Schema is the JSON Schema (draft 2020-12) of the JSON document, with
// every field described.
//
//go:embed schema.json
var Schema []byte

// Snapshot is the graph at one level over one window: the document every
// export is written from, and the JSON document itself.
type Snapshot struct {
	Version int    `json:"version"`
	Level   Level  `json:"level"`
	Window  Window `json:"window"`
	Nodes   []Node `json:"nodes"`
	Edges   []Edge `json:"edges"`
}

// Window is the span a snapshot covers.
type Window struct {
	// Name is the window asked for: 1m, 5m, 15m or 1h.
	Name string `json:"name"`
	// Start and End are what the buckets cover: Start is the oldest
	// bucket's start, or when the graph began if that is later.
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
}

// Seconds returns the window's span in seconds, at least 1.
func (w Window) Seconds() float64 { return max(w.End.Sub(w.Start).Seconds(), 1) }

// Node is an endpoint, or the endpoints rolled up into it.
type Node struct {
	// ID is unique in the snapshot and stable: "<kind>:<key>", such as
	// "workload:shop/web" or "external:203.0.113.10".
	ID           string             `json:"id"`
	Kind         model.EndpointKind `json:"kind"`
	Name         string             `json:"name"`
	Namespace    string             `json:"namespace,omitempty"`
	Workload     string             `json:"workload,omitempty"`
	WorkloadKind string             `json:"workload_kind,omitempty"`
	Host         string             `json:"host,omitempty"`
	Addrs        []netip.Addr       `json:"addrs,omitempty"`
	// NameSource is what a name from traffic rests on (see
	// model.Endpoint.NameSource): "dns", or "tls-sni" for a client's
	// claim that no DNS answer confirmed.
	NameSource string `json:"name_source,omitempty"`
	// Image is the container image, where every endpoint of the node that
	// names one names the same.
	Image string `json:"image,omitempty"`
	// Zone is the availability zone: the endpoint's label
	// topology.kubernetes.io/zone or cloud.availability_zone, else that
	// of its machine's endpoint if the graph has it; where every endpoint
	// of the node that has one has the same.
	Zone string `json:"zone,omitempty"`
	// Labels are the labels (Kubernetes, container, cloud) that every
	// endpoint of the node with labels has, key and value. A host node
	// has its machine's, not those of what runs on it.
	Labels map[string]string `json:"labels,omitempty"`

	// mixed says which of Image and Zone differed between the node's
	// endpoints (and so are empty); ownLabels that Labels is the node's
	// own copy, not an endpoint's.
	mixed     uint8
	ownLabels bool
}

// Edge is the flows from a client node to a server node on one protocol and
// server port, summed over the window.
type Edge struct {
	ID       string      `json:"id"`
	Source   string      `json:"source"`
	Target   string      `json:"target"`
	Protocol model.Proto `json:"protocol"`
	Port     uint16      `json:"port"`
	// Forward is client to server, Reverse server to client.
	Forward     Traffic `json:"forward"`
	Reverse     Traffic `json:"reverse"`
	Connections uint64  `json:"connections"`
	RTT         *RTT    `json:"rtt,omitempty"`
	// FirstSeen and LastSeen are the first and last time flows of the edge
	// were added, in or before the window.
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	// L7 is what the L7 parsers saw, where they looked.
	L7 *L7 `json:"l7,omitempty"`
	// Health is the connection outcomes, ICMP errors, drops and RTT of
	// local sockets, where there were any (version 2).
	Health *Health `json:"health,omitempty"`
}

// Traffic is what went one way.
type Traffic struct {
	Bytes       uint64 `json:"bytes"`
	Packets     uint64 `json:"packets"`
	Retransmits uint64 `json:"retransmits"`
}

// Add adds o to t.
func (t *Traffic) Add(o Traffic) {
	t.Bytes += o.Bytes
	t.Packets += o.Packets
	t.Retransmits += o.Retransmits
}

// trafficOf is what a flow's direction counted.
func trafficOf(d model.Direction) Traffic {
	return Traffic{Bytes: d.Bytes, Packets: d.Packets, Retransmits: uint64(d.Retransmits)}
}

// RTT is the TCP handshakes' round-trip times (SYN to SYN-ACK).
type RTT struct {
	Samples uint64        `json:"samples"`
	Mean    time.Duration `json:"mean_ns"`
	Max     time.Duration `json:"max_ns"`
}

// L7 are an edge's application-level requests, as the L7 parsers in the
// kernel saw them (see topology/l7.go).
type L7 struct {
	// Protocol is the application protocol: http, http2, tls, dns,
	// postgresql, mysql, redis, kafka.
	Protocol string `json:"protocol"`
	Requests uint64 `json:"requests"`
	// Errors are the requests that failed: HTTP 5xx, DNS SERVFAIL.
	Errors uint64 `json:"errors"`
	// Duration is the requests' total time to response.
	Duration time.Duration `json:"duration_ns"`

	// RequestRate and ErrorRate are per second of the window.
	RequestRate float64 `json:"request_rate,omitempty"`
	ErrorRate   float64 `json:"error_rate,omitempty"`
	// Responses are the responses seen (HTTP 1xx not counted).
	Responses uint64 `json:"responses,omitempty"`
	// Methods counts HTTP requests by method, Statuses HTTP responses by
	// class ("2xx"), Rcodes DNS responses by code ("NXDOMAIN"): a DNS
	// NXDOMAIN is an answer, not an error, and is shown apart.
	Methods  map[string]uint64 `json:"methods,omitempty"`
	Statuses map[string]uint64 `json:"statuses,omitempty"`
	Rcodes   map[string]uint64 `json:"rcodes,omitempty"`
	// Latency is from a request's first byte to its response's, from the
	// kernel's histograms; nil without a matched response.
	Latency *Latency `json:"latency,omitempty"`
}

// Latency is the quantiles of an edge's response times.
type Latency struct {
	Samples uint64        `json:"samples"`
	P50     time.Duration `json:"p50_ns"`
	P90     time.Duration `json:"p90_ns"`
	P99     time.Duration `json:"p99_ns"`
}

// Bytes returns the bytes both ways.
func (e *Edge) Bytes() uint64 { return e.Forward.Bytes + e.Reverse.Bytes }

// edgeID names an edge uniquely in its snapshot.
func edgeID(e *Edge) string {
	return e.Source + " -> " + e.Target + " " + e.Protocol.String() + "/" + strconv.Itoa(int(e.Port))
}

// WriteJSON writes the snapshot as the JSON document that Schema describes.
// It writes a node or an edge at a time, never the whole document at once.
func WriteJSON(w io.Writer, s *Snapshot) error {
	j := newJSONStream(w, "  ")
	head := struct {
		Version int    `json:"version"`
		Level   Level  `json:"level"`
		Window  Window `json:"window"`
	}{s.Version, s.Level, s.Window}
	err := j.object(head, []string{"nodes", "edges"},
		func() { array(j, s.Nodes, 1) }, func() { array(j, s.Edges, 1) })
	if err != nil {
		return fmt.Errorf("write graph json: %w", err)
	}
	return nil
}

// ReadJSON reads what WriteJSON wrote. It fails on a document of another
// version.
func ReadJSON(r io.Reader) (*Snapshot, error) {
	var s Snapshot
	if err := json.NewDecoder(r).Decode(&s); err != nil {
		return nil, fmt.Errorf("read graph json: %w", err)
	}
	if s.Version != Version {
		return nil, fmt.Errorf("read graph json: version %d, want %d", s.Version, Version)
	}
	return &s, nil
}
