package flows

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/flowmap/flowmap/model"
)

// maxNamesPerBatch bounds the names a batch carries; more are counted as
// dropped (Stats.NamesDropped).
const maxNamesPerBatch = 4096

// Errors of the name decoders.
var (
	ErrNotClientHello = errors.New("not a TLS ClientHello")
	ErrNoServerName   = errors.New("no server name")
)

// DecodeDNSNames returns the addresses that the A and AAAA answers of a DNS
// response give, each named by the question's name (what the client asked
// for, not the CNAME chain's last name), with the record's TTL.
//
// A message cut short (a truncated response, or one longer than the
// programs copy) gives the answers that fit whole.
func DecodeDNSNames(msg []byte, dns *layers.DNS) ([]model.Name, error) {
	if err := decodeDNS(msg, dns); err != nil {
		if !decodeWhole(msg, dns) {
			return nil, fmt.Errorf("decode dns response: %w", err)
		}
	}
	if !dns.QR || len(dns.Questions) != 1 {
		return nil, fmt.Errorf("decode dns response: qr %v, %d questions", dns.QR, len(dns.Questions))
	}
	q := strings.TrimSuffix(strings.ToLower(string(dns.Questions[0].Name)), ".")
	if q == "" {
		return nil, errors.New("decode dns response: empty question")
	}
	var out []model.Name
	for _, a := range dns.Answers {
		if a.Class != layers.DNSClassIN || (a.Type != layers.DNSTypeA && a.Type != layers.DNSTypeAAAA) {
			continue
		}
		addr, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		out = append(out, model.Name{Addr: addr.Unmap(), Name: q, TTL: time.Duration(a.TTL) * time.Second, Source: model.NameDNS})
	}
	return out, nil
}

// ServerName returns the server name (SNI, RFC 6066) of a TLS record that
// holds a ClientHello, or as much of one as fits: the extensions are read
// as far as they go. It returns ErrNotClientHello or ErrNoServerName.
func ServerName(rec []byte) (string, error) {
	// Record: type 22, version, length; handshake: type 1, length(3),
	// client version(2), random(32).
	if len(rec) < 5+4+2+32 || rec[0] != 0x16 || rec[1] != 3 || rec[5] != 1 {
		return "", ErrNotClientHello
	}
	b := rec[5+4+2+32:]
	skip := func(lenBytes int) bool {
		if len(b) < lenBytes {
			return false
		}
		n := 0
		for _, c := range b[:lenBytes] {
			n = n<<8 | int(c)
		}
		if len(b) < lenBytes+n {
			return false
		}
		b = b[lenBytes+n:]
		return true
	}
	// Session id, cipher suites, compression methods.
	if !skip(1) || !skip(2) || !skip(1) {
		return "", ErrNoServerName
	}
	if len(b) < 2 {
		return "", ErrNoServerName
	}
	b = b[2:] // the extensions' length: they may be cut short, read what is there
	for len(b) >= 4 {
		typ := binary.BigEndian.Uint16(b)
		n := int(binary.BigEndian.Uint16(b[2:]))
		b = b[4:]
		if len(b) < n {
			return "", ErrNoServerName
		}
		ext := b[:n]
		b = b[n:]
		if typ != 0 {
			continue
		}
		// server_name_list: length(2), then entries of type(1) length(2).
		if len(ext) < 2 {
			return "", ErrNoServerName
		}
		ext = ext[2:]
		for len(ext) >= 3 {
			nt, nl := ext[0], int(binary.BigEndian.Uint16(ext[1:]))
			ext = ext[3:]
			if len(ext) < nl {
				break
			}
			if name := bytes.TrimSuffix(ext[:nl], []byte(".")); nt == 0 && validHostName(name) {
				return strings.ToLower(string(name)), nil
			}
			ext = ext[nl:]
		}
		return "", ErrNoServerName
	}
	return "", ErrNoServerName
}

// validHostName reports whether b looks like a DNS host name: labels of 1
// to 63 letters, digits, '-' and '_' joined by dots, 253 bytes at most, with
// no trailing dot (ServerName takes the root's off first).
func validHostName(b []byte) bool {
	if len(b) == 0 || len(b) > 253 {
		return false
	}
	label := 0
	for _, c := range b {
		switch {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
			label++
			if label > 63 {
				return false
			}
		default:
			return false
		}
	}
	return label > 0
}

// nameDecoder turns name events into names; it keeps its event and its
// DNS layer to decode without allocating one per event.
type nameDecoder struct {
	ev  bpfNameEvent
	dns layers.DNS
}

// nameEventHeader is the bytes of a name_event before its data.
var nameEventHeader = binary.Size(bpfNameEvent{}) - len(bpfNameEvent{}.Data)

// decode returns the names in one event of l7_names. The event may end
// where its data does (the ring buffer's carry the whole of Data); a length
// past the end is an error.
func (nd *nameDecoder) decode(raw []byte, seen time.Time) ([]model.Name, error) {
	if len(raw) < nameEventHeader {
		return nil, fmt.Errorf("name event of %d bytes, want at least %d", len(raw), nameEventHeader)
	}
	// The generated struct's fields up to Data, in its order; Data is
	// taken from raw as far as Len says. (binary.Decode of the whole
	// struct would read Data's 1024 bytes one by one, by reflection.)
	ev := &nd.ev
	off := 0
	for _, f := range [...]any{&ev.Flow, &ev.Len, &ev.Kind, &ev.Pad} {
		n, err := binary.Decode(raw[off:], binary.NativeEndian, f)
		if err != nil {
			return nil, fmt.Errorf("decode name event: %w", err)
		}
		off += n
	}
	if off != nameEventHeader {
		// name_event has a field before data that this list lacks.
		return nil, fmt.Errorf("decode name event: header of %d bytes, want %d", off, nameEventHeader)
	}
	data := raw[off:]
	if int(ev.Len) > len(data) {
		return nil, fmt.Errorf("name event of %d bytes says %d", len(data), ev.Len)
	}
	data = data[:ev.Len]
	client, server := addr(ev.Flow.Saddr), addr(ev.Flow.Daddr)
	switch bpfNameKind(ev.Kind) {
	case bpfNameKindNAME_DNS:
		names, err := DecodeDNSNames(data, &nd.dns)
		for i := range names {
			names[i].Client, names[i].Seen = client, seen
		}
		return names, err
	case bpfNameKindNAME_TLS:
		sni, err := ServerName(data)
		if err != nil {
			return nil, err
		}
		return []model.Name{{Addr: server, Name: sni, TTL: model.NameTTLTLS, Source: model.NameTLS, Client: client, Seen: seen}}, nil
	}
	return nil, fmt.Errorf("name event of kind %d", ev.Kind)
}

// readNames reads l7_names until ctx is done, and hands each name to add.
// Events that do not decode are counted by bad.
func readNames(ctx context.Context, m *ebpf.Map, add func(model.Name), bad func()) error {
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		return fmt.Errorf("read ring buffer %s: %w", m, err)
	}
	stop := context.AfterFunc(ctx, func() { rd.Close() })
	defer stop()
	defer rd.Close()
	var (
		nd  nameDecoder
		rec ringbuf.Record
	)
	for {
		if err := rd.ReadInto(&rec); err != nil {
			if errors.Is(err, ringbuf.ErrClosed) {
				return ctx.Err()
			}
			return fmt.Errorf("read ring buffer %s: %w", m, err)
		}
		names, err := nd.decode(rec.RawSample, time.Now())
		if err != nil {
			bad()
			continue
		}
		for _, n := range names {
			add(n)
		}
	}
}

// maxTruncatedAnswers bounds the retries of decodeWhole.
const maxTruncatedAnswers = 32

// decodeWhole decodes the answers of msg that fit whole: it drops the
// authority and additional sections and answers from the end until the
// rest decodes.
func decodeWhole(msg []byte, dns *layers.DNS) bool {
	if len(msg) < 12 {
		return false
	}
	m := bytes.Clone(msg)
	clear(m[8:12])
	an := min(int(binary.BigEndian.Uint16(m[6:])), maxTruncatedAnswers)
	for ; an >= 0; an-- {
		binary.BigEndian.PutUint16(m[6:], uint16(an))
		if decodeDNS(m, dns) == nil {
			return true
		}
	}
	return false
}

// decodeDNS is layers.DNS.DecodeFromBytes, which in gopacket 1.1.19
// panics on a record cut inside its fixed fields (it slices past the end):
// the panic is returned as an error.
func decodeDNS(msg []byte, dns *layers.DNS) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("dns message of %d bytes: %v", len(msg), r)
		}
	}()
	return dns.DecodeFromBytes(msg, gopacket.NilDecodeFeedback)
}
