package flows

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flowmap/flowmap/model"
)

// dnsCompressed is a response for www.example.com whose answers name it by
// compression pointers: a CNAME to cdn.example.com (a pointer into the
// question), and cdn's A record (a pointer into the CNAME's data).
var dnsCompressed = []byte{
	0xab, 0xcd, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0,
	// question at 12: www.example.com A IN
	3, 'w', 'w', 'w', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 3, 'c', 'o', 'm', 0, 0, 1, 0, 1,
	// answer: ptr(12) CNAME IN ttl 60, rdata cdn + ptr(16) (example.com) at offset 45
	0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 6, 3, 'c', 'd', 'n', 0xc0, 16,
	// answer: ptr(45) A IN ttl 30 203.0.113.50
	0xc0, 45, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 203, 0, 113, 50,
}

func TestDecodeDNSNames(t *testing.T) {
	cases := []struct {
		name    string
		msg     []byte
		want    []model.Name
		wantErr bool
	}{
		{
			name: "compression pointers name the address by the question",
			msg:  dnsCompressed,
			want: []model.Name{{Addr: netip.MustParseAddr("203.0.113.50"), Name: "www.example.com", TTL: 30 * time.Second, Source: model.NameDNS}},
		},
		{
			name: "cut inside the last answer",
			msg:  dnsCompressed[:len(dnsCompressed)-3],
			want: nil,
		},
		{name: "a query", msg: append([]byte{1, 2, 1, 0}, dnsCompressed[4:33]...), wantErr: true},
		{name: "garbage", msg: []byte{1, 2, 3}, wantErr: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, _, err := DecodeDNSNames(tc.msg)
			if (err != nil) != tc.wantErr {
				t.Fatalf("DecodeDNSNames error = %v, want error %v", err, tc.wantErr)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("DecodeDNSNames = %+v, want %+v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("name %d = %+v, want %+v", i, got[i], tc.want[i])
				}
			}
		})
	}
}

// rr is an answer record for dnsResponse: an A or AAAA record when addr is
// set, a CNAME to target otherwise.
type rr struct {
	owner, target string
	addr          string
}

// dnsResponse builds a response to a question for q holding answers,
// names written out whole (no compression), each with a TTL of 60s.
func dnsResponse(q string, answers ...rr) []byte {
	name := func(b []byte, n string) []byte {
		for _, l := range strings.Split(strings.TrimSuffix(n, "."), ".") {
			b = append(b, byte(len(l)))
			b = append(b, l...)
		}
		return append(b, 0)
	}
	msg := []byte{0xab, 0xcd, 0x81, 0x80, 0, 1, 0, byte(len(answers)), 0, 0, 0, 0}
	msg = append(name(msg, q), 0, 1, 0, 1)
	for _, a := range answers {
		msg = name(msg, a.owner)
		var rdata []byte
		typ := byte(5)
		if a.addr != "" {
			ip := netip.MustParseAddr(a.addr)
			rdata, typ = ip.AsSlice(), 1
			if ip.Is6() {
				typ = 28
			}
		} else {
			rdata = name(nil, a.target)
		}
		msg = append(msg, 0, typ, 0, 1, 0, 0, 0, 60, byte(len(rdata)>>8), byte(len(rdata)))
		msg = append(msg, rdata...)
	}
	return msg
}

// TestDecodeDNSNamesChain plays forged answers: records whose owner the
// question does not reach name nothing, and are counted.
func TestDecodeDNSNamesChain(t *testing.T) {
	named := func(addr string) model.Name {
		return model.Name{Addr: netip.MustParseAddr(addr), Name: "www.example.com", TTL: time.Minute, Source: model.NameDNS}
	}
	// A chain of n CNAMEs from the question, c1 ... cn, the last one's A.
	chain := func(n int) []rr {
		var out []rr
		prev := "www.example.com"
		for i := range n {
			next := fmt.Sprintf("c%d.example.net", i+1)
			out = append(out, rr{owner: prev, target: next})
			prev = next
		}
		return append(out, rr{owner: prev, addr: "203.0.113.7"})
	}
	cases := []struct {
		name          string
		msg           []byte
		want          []model.Name
		wantUnchained int
	}{
		{
			name:          "an answer for another name names nothing",
			msg:           dnsResponse("www.example.com", rr{owner: "s3.amazonaws.com", addr: "198.51.100.66"}),
			wantUnchained: 1,
		},
		{
			name: "the question's own records, case aside",
			msg: dnsResponse("www.example.com", rr{owner: "WWW.Example.COM", addr: "203.0.113.1"},
				rr{owner: "www.example.com", addr: "2001:db8::1"}),
			want: []model.Name{named("203.0.113.1"), named("2001:db8::1")},
		},
		{
			name: "a cname chain names the last A after the question",
			msg: dnsResponse("www.example.com", rr{owner: "www.example.com", target: "edge.cdn.example.net"},
				rr{owner: "edge.cdn.example.net", addr: "203.0.113.50"}),
			want: []model.Name{named("203.0.113.50")},
		},
		{
			name: "a cname to another name, and a record of a third the chain does not reach",
			msg: dnsResponse("www.example.com", rr{owner: "www.example.com", target: "edge.cdn.example.net"},
				rr{owner: "edge.cdn.example.net", addr: "203.0.113.50"},
				rr{owner: "s3.amazonaws.com", addr: "198.51.100.66"}),
			want:          []model.Name{named("203.0.113.50")},
			wantUnchained: 1,
		},
		{
			name: "a cname that no one's chain leads to names nothing",
			msg: dnsResponse("www.example.com", rr{owner: "evil.example", target: "s3.amazonaws.com"},
				rr{owner: "s3.amazonaws.com", addr: "198.51.100.66"}),
			wantUnchained: 1,
		},
		{
			name:          "a cname loop ends",
			msg:           dnsResponse("www.example.com", rr{owner: "www.example.com", target: "a.example"}, rr{owner: "a.example", target: "www.example.com"}, rr{owner: "b.example", addr: "198.51.100.66"}),
			wantUnchained: 1,
		},
		{name: "a chain of maxCNAMEChain", msg: dnsResponse("www.example.com", chain(maxCNAMEChain)...), want: []model.Name{named("203.0.113.7")}},
		{name: "a chain longer than maxCNAMEChain", msg: dnsResponse("www.example.com", chain(maxCNAMEChain+1)...), wantUnchained: 1},
		{
			name: "cut inside the third answer: the first two kept, read once",
			msg: func() []byte {
				m := dnsResponse("www.example.com", rr{owner: "www.example.com", addr: "203.0.113.1"},
					rr{owner: "www.example.com", addr: "203.0.113.2"}, rr{owner: "www.example.com", addr: "203.0.113.3"})
				return m[:len(m)-2]
			}(),
			want: []model.Name{named("203.0.113.1"), named("203.0.113.2")},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, unchained, err := DecodeDNSNames(tc.msg)
			if err != nil {
				t.Fatalf("DecodeDNSNames error = %v, want none", err)
			}
			if !slices.Equal(got, tc.want) || unchained != tc.wantUnchained {
				t.Errorf("DecodeDNSNames = %+v, %d unchained; want %+v, %d", got, unchained, tc.want, tc.wantUnchained)
			}
		})
	}
}

// TestReadDNSNameLoop: a compression pointer to itself, or forwards, is
// an error, not a loop.
func TestReadDNSNameLoop(t *testing.T) {
	for _, msg := range [][]byte{
		{0xc0, 0},
		{1, 'a', 0xc0, 0},
		{0xc0, 2, 1, 'a', 0},
	} {
		if name, _, err := readDNSName(msg, 0); err == nil {
			t.Errorf("readDNSName(%v) = %q, want an error", msg, name)
		}
	}
}

func TestServerName(t *testing.T) {
	hello := clientHello(t, "API.Example.com")
	cases := []struct {
		name    string
		rec     []byte
		want    string
		wantErr error
	}{
		{"crypto/tls client hello", hello, "api.example.com", nil},
		{"cut before the extensions", hello[:60], "", ErrNoServerName},
		{"not a handshake", append([]byte{0x17}, hello[1:]...), "", ErrNotClientHello},
		{"a server hello", func() []byte { b := bytes.Clone(hello); b[5] = 2; return b }(), "", ErrNotClientHello},
		{"empty", nil, "", ErrNotClientHello},
		{"the root's dot taken off", helloNamed(t, "api.example.com."), "api.example.com", nil},
		{"only the root", helloNamed(t, "."), "", ErrNoServerName},
		{"an empty label", helloNamed(t, "api..example.com"), "", ErrNoServerName},
		{"a label of 64 bytes", helloNamed(t, strings.Repeat("a", 64)+".example"), "", ErrNoServerName},
		{"a space", helloNamed(t, "api example"), "", ErrNoServerName},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ServerName(tc.rec)
			if got != tc.want || !errors.Is(err, tc.wantErr) {
				t.Errorf("ServerName = %q, %v; want %q, %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

// helloNamed returns a ClientHello whose server name entry holds name as
// it is, which crypto/tls would not send (a trailing dot, an empty label).
func helloNamed(t testing.TB, name string) []byte {
	t.Helper()
	stand := strings.Repeat("x", len(name))
	if len(name) < 8 { // long enough not to be found in the random bytes
		stand = "xxxxxxxx"
	}
	hello := clientHello(t, stand+".example")
	// The entry: type 0 (host name), length, the name.
	entry := func(n string) []byte { return append([]byte{0, byte(len(n) >> 8), byte(len(n))}, n...) }
	i := bytes.Index(hello, entry(stand+".example"))
	if i < 0 {
		t.Fatalf("no server name entry in the client hello")
	}
	// The lengths around the entry are kept: name takes the stand-in's
	// bytes and pads the rest of them with a name the parser skips.
	out := bytes.Clone(hello)
	b := out[i : i+3+len(stand)+len(".example")]
	for j := range b {
		b[j] = 0
	}
	copy(b, entry(name))
	if rest := len(b) - 3 - len(name); rest >= 3 {
		// A second entry of another type (1), which ServerName skips.
		copy(b[3+len(name):], []byte{1, byte((rest - 3) >> 8), byte(rest - 3)})
	} else {
		t.Fatalf("name %q too long for the stand-in", name)
	}
	return out
}

func FuzzDecodeDNSNames(f *testing.F) {
	f.Add(dnsCompressed)
	f.Add(dnsCompressed[:40])
	f.Fuzz(func(t *testing.T, msg []byte) {
		names, _, err := DecodeDNSNames(msg)
		if err != nil && len(names) > 0 {
			t.Fatalf("names %+v with error %v", names, err)
		}
		for _, n := range names {
			if !n.Addr.IsValid() || n.Name == "" {
				t.Fatalf("bad name %+v", n)
			}
		}
	})
}

func FuzzServerName(f *testing.F) {
	f.Add(clientHello(f, "api.example.com"))
	f.Add([]byte{0x16, 3, 1, 0, 4, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, rec []byte) {
		name, err := ServerName(rec)
		if err == nil && !validHostName([]byte(name)) {
			t.Fatalf("ServerName = %q, not a host name", name)
		}
	})
}

// nameEvent returns a name_event of kind from client to server carrying
// data, at most as much as the programs send, as encodeNameEvent encodes
// it.
func nameEvent(t testing.TB, kind bpfNameKind, client, server string, data []byte) []byte {
	t.Helper()
	ev := bpfNameEvent{Kind: uint8(kind)}
	ev.Flow.Saddr = netip.MustParseAddr(client).As16()
	ev.Flow.Daddr = netip.MustParseAddr(server).As16()
	ev.Len = uint16(copy(ev.Data[:], data))
	return encodeNameEvent(t, &ev, int(ev.Len))
}

// encodeNameEvent encodes ev through the generated struct and cuts it
// after n bytes of data, as decode takes it.
func encodeNameEvent(t testing.TB, ev *bpfNameEvent, n int) []byte {
	t.Helper()
	b, err := binary.Append(nil, binary.NativeEndian, ev)
	if err != nil {
		t.Fatalf("encode name event: %v", err)
	}
	return b[:nameEventHeader+n]
}

func TestNameDecoder(t *testing.T) {
	const cli, srv = "::ffff:198.51.100.2", "::ffff:203.0.113.9"
	seen := time.Unix(1700000000, 0)
	dns := nameEvent(t, bpfNameKindNAME_DNS, cli, srv, dnsCompressed)
	tls := nameEvent(t, bpfNameKindNAME_TLS, cli, srv, clientHello(t, "api.example.com"))
	whole := nameEvent(t, bpfNameKindNAME_DNS, cli, srv, dnsCompressed)
	whole = append(whole, make([]byte, binary.Size(bpfNameEvent{})-len(whole))...)
	var past bpfNameEvent
	past.Kind = uint8(bpfNameKindNAME_DNS)
	past.Len = uint16(copy(past.Data[:], dnsCompressed)) + 1
	lenPast := encodeNameEvent(t, &past, len(dnsCompressed))
	client := netip.MustParseAddr("198.51.100.2")
	cases := []struct {
		name    string
		raw     []byte
		want    []model.Name
		wantErr bool
	}{
		{name: "dns response", raw: dns, want: []model.Name{
			{Addr: netip.MustParseAddr("203.0.113.50"), Name: "www.example.com", TTL: 30 * time.Second, Source: model.NameDNS, Client: client, Seen: seen},
		}},
		{name: "whole event, as the ring buffer has it", raw: whole, want: []model.Name{
			{Addr: netip.MustParseAddr("203.0.113.50"), Name: "www.example.com", TTL: 30 * time.Second, Source: model.NameDNS, Client: client, Seen: seen},
		}},
		{name: "tls client hello", raw: tls, want: []model.Name{
			{Addr: netip.MustParseAddr("203.0.113.9"), Name: "api.example.com", TTL: model.NameTTLTLS, Source: model.NameTLS, Client: client, Seen: seen},
		}},
		{name: "length past the data", raw: lenPast, wantErr: true},
		{name: "cut inside the header", raw: dns[:nameEventHeader-1], wantErr: true},
		{name: "empty", raw: nil, wantErr: true},
		{name: "unknown kind", raw: nameEvent(t, 9, cli, srv, dnsCompressed), wantErr: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var nd nameDecoder
			got, err := nd.decode(tc.raw, seen)
			if (err != nil) != tc.wantErr {
				t.Fatalf("decode error = %v, want error %v", err, tc.wantErr)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("decode = %+v, want %+v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("name %d = %+v, want %+v", i, got[i], tc.want[i])
				}
			}
		})
	}
}

// FuzzNameEvent feeds the ring buffer's decoder whole events.
func FuzzNameEvent(f *testing.F) {
	const cli, srv = "::ffff:198.51.100.2", "::ffff:203.0.113.9"
	f.Add(nameEvent(f, bpfNameKindNAME_DNS, cli, srv, dnsCompressed))
	f.Add(nameEvent(f, bpfNameKindNAME_TLS, cli, srv, clientHello(f, "api.example.com")))
	f.Add(nameEvent(f, 9, cli, srv, nil))
	f.Fuzz(func(t *testing.T, raw []byte) {
		var nd nameDecoder
		nd.decode(raw, time.Time{})
	})
}
