package flows

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket/layers"

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
			var dns layers.DNS
			got, err := DecodeDNSNames(tc.msg, &dns)
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
		var dns layers.DNS
		names, err := DecodeDNSNames(msg, &dns)
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

// FuzzNameEvent feeds the ring buffer's decoder whole events.
func FuzzNameEvent(f *testing.F) {
	ev := func(kind byte, data []byte) []byte {
		var e bpfNameEvent
		hdr := binary.Size(e.Flow) + 8
		b := make([]byte, hdr+len(data))
		binary.NativeEndian.PutUint16(b[binary.Size(e.Flow):], uint16(len(data)))
		b[binary.Size(e.Flow)+2] = kind
		copy(b[hdr:], data)
		return b
	}
	f.Add(ev(byte(model.NameDNS), dnsCompressed))
	f.Add(ev(byte(model.NameTLS), clientHello(f, "api.example.com")))
	f.Add(ev(9, nil))
	f.Fuzz(func(t *testing.T, raw []byte) {
		var nd nameDecoder
		nd.decode(raw, time.Time{})
	})
}
