package export

import (
	"fmt"
	"hash/maphash"
	"slices"
	"strconv"
	"strings"

	"github.com/flowmap/flowmap/model"
)

// Filter picks the flows an exporter sends. The zero Filter sends every
// flow.
type Filter struct {
	// Namespaces, if any, keeps the flows with an end in one of these
	// Kubernetes namespaces.
	Namespaces []string
	// Ports, if any, keeps the flows whose protocol and server port (the
	// destination port: a record is oriented client to server) one of them
	// matches.
	Ports []Port
	// Sample, above 1, keeps one flow in Sample: a flow is kept or not by a
	// hash of its key, so that a kept flow is kept in every interval. The
	// exporters write the rate into each record.
	Sample uint32
}

// Port matches flows by protocol and server port. A zero Proto matches
// TCP and UDP; a zero Port any port of Proto.
type Port struct {
	Proto model.Proto
	Port  uint16
}

// ParsePorts parses a comma-separated list of PROTO/PORT, PORT or PROTO
// (tcp, udp, icmp, icmpv6 or a protocol number): "tcp/443,53,udp/5353,icmp".
func ParsePorts(s string) ([]Port, error) {
	var out []Port
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		proto, port, hasPort := strings.Cut(f, "/")
		if !hasPort {
			if _, err := strconv.ParseUint(f, 10, 16); err == nil {
				proto, port, hasPort = "", f, true
			}
		}
		var p Port
		if proto != "" {
			v, err := parseProto(proto)
			if err != nil {
				return nil, fmt.Errorf("parse port %q: %w", f, err)
			}
			p.Proto = v
		}
		if hasPort {
			v, err := strconv.ParseUint(port, 10, 16)
			if err != nil || v == 0 {
				return nil, fmt.Errorf("parse port %q: want a port from 1 to 65535", f)
			}
			p.Port = uint16(v)
		}
		out = append(out, p)
	}
	return out, nil
}

func parseProto(s string) (model.Proto, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return model.ProtoTCP, nil
	case "udp":
		return model.ProtoUDP, nil
	case "icmp":
		return model.ProtoICMP, nil
	case "icmpv6":
		return model.ProtoICMPv6, nil
	}
	v, err := strconv.ParseUint(s, 10, 8)
	if err != nil || v == 0 {
		return 0, fmt.Errorf("unknown protocol %q", s)
	}
	return model.Proto(v), nil
}

func (p Port) match(f *model.Flow) bool {
	switch {
	case p.Proto == 0 && f.Proto != model.ProtoTCP && f.Proto != model.ProtoUDP:
		return false
	case p.Proto != 0 && f.Proto != p.Proto:
		return false
	}
	return p.Port == 0 || f.DstPort == p.Port
}

func (p Port) String() string {
	switch {
	case p.Proto == 0:
		return strconv.Itoa(int(p.Port))
	case p.Port == 0:
		return p.Proto.String()
	}
	return p.Proto.String() + "/" + strconv.Itoa(int(p.Port))
}

// SampleRate returns N of the filter's 1-in-N sampling, 1 without.
func (f *Filter) SampleRate() uint32 { return max(f.Sample, 1) }

// sampleSeed is fixed for the process, so that a flow is sampled alike in
// every interval.
var sampleSeed = maphash.MakeSeed()

// keep tells whether fl passes the filter, and if not the result it is
// counted as: "filtered" or "sampled_out".
func (f *Filter) keep(fl *model.Flow) (bool, string) {
	if len(f.Namespaces) > 0 && !slices.Contains(f.Namespaces, fl.SrcEndpoint.Namespace) &&
		!slices.Contains(f.Namespaces, fl.DstEndpoint.Namespace) {
		return false, ResultFiltered
	}
	if len(f.Ports) > 0 && !slices.ContainsFunc(f.Ports, func(p Port) bool { return p.match(fl) }) {
		return false, ResultFiltered
	}
	if f.Sample > 1 && maphash.Comparable(sampleSeed, fl.Key())%uint64(f.Sample) != 0 {
		return false, ResultSampledOut
	}
	return true, ""
}
