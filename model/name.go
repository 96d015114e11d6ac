package model

import (
	"net/netip"
	"strings"
	"time"
	"unicode/utf8"
)

// Name is a name for an address, as a DNS answer or a TLS ClientHello's
// server name gave it.
type Name struct {
	Addr netip.Addr `json:"addr"`
	Name string     `json:"name"`
	// TTL is the DNS record's; for a TLS server name, NameTTLTLS.
	TTL    time.Duration `json:"ttl_ns"`
	Source NameSource    `json:"source"`
	// Client asked for the name.
	Client netip.Addr `json:"client"`
	Seen   time.Time  `json:"seen"`
}

// NameSource is where a name came from.
type NameSource uint8

// The sources of names.
const (
	NameDNS NameSource = iota
	NameTLS
)

func (s NameSource) String() string {
	switch s {
	case NameDNS:
		return "dns"
	case NameTLS:
		return "tls"
	}
	return "unknown"
}

// MarshalText writes the source's name.
func (s NameSource) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// NameTTLTLS is how long a TLS server name names its server's address: the
// ClientHello says nothing of it, and a connection is a sign of use.
const NameTTLTLS = 10 * time.Minute

// LabelValue returns s as a Prometheus label value may be: valid UTF-8,
// each invalid byte sequence turned into U+FFFD. Names reach labels from
// files and traffic (a CIDR file's names, a namespace read from a
// container's files, a DNS name), and client_golang's MustNewConstMetric
// panics on invalid UTF-8 at scrape time; every collector passes its label
// values through this one function.
func LabelValue(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}
