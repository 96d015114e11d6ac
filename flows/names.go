package flows

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"

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

// maxCNAMEChain bounds the CNAMEs DecodeDNSNames follows from the
// question; resolvers stop near there too (Unbound at 11, BIND at 16
// restarts), and a chain longer than this in one answer is not a CDN's.
const maxCNAMEChain = 8

// DecodeDNSNames returns the addresses that the A and AAAA answers of a DNS
// response give, each named by the question's name (what the client asked
// for, not the CNAME chain's last name), with the record's TTL.
//
// Only the records that the answer ties to the question are taken: those
// whose owner is the question's name, or a name the question reaches
// through the answer's CNAMEs (at most maxCNAMEChain of them), compared
// without case. Any other A or AAAA record (a forged answer naming
// s3.amazonaws.com's address after a question for evil.example) names
// nothing and is counted in unchained.
//
// The message is read once: one cut short (a truncated response, or one
// longer than the programs copy) gives the answers before the cut. A
// message that is not a response with one question, or whose question
// does not read, is an error.
func DecodeDNSNames(msg []byte) (names []model.Name, unchained int, err error) {
	q, answers, err := parseDNSResponse(msg)
	if err != nil {
		return nil, 0, fmt.Errorf("decode dns response: %w", err)
	}
	// The chain: the question, then each CNAME's target in turn.
	chain := []string{q}
	for cur := q; len(chain) <= maxCNAMEChain; {
		next := ""
		for _, a := range answers {
			if a.typ == dnsTypeCNAME && a.owner == cur && !slices.Contains(chain, a.target) {
				next = a.target
				break
			}
		}
		if next == "" {
			break
		}
		chain = append(chain, next)
		cur = next
	}
	for _, a := range answers {
		if !a.addr.IsValid() {
			continue
		}
		if !slices.Contains(chain, a.owner) {
			unchained++
			continue
		}
		names = append(names, model.Name{Addr: a.addr, Name: q, TTL: time.Duration(a.ttl) * time.Second, Source: model.NameDNS})
	}
	return names, unchained, nil
}

// The DNS types and class that DecodeDNSNames reads (RFC 1035 3.2.2, RFC 3596).
const (
	dnsTypeA     = 1
	dnsTypeCNAME = 5
	dnsTypeAAAA  = 28
	dnsClassIN   = 1
)

// dnsAnswer is what DecodeDNSNames reads of an answer record of class IN:
// its owner, and for a CNAME its target, for an A or AAAA its address.
type dnsAnswer struct {
	owner  string
	typ    uint16
	ttl    uint32
	target string
	addr   netip.Addr
}

// parseDNSResponse reads the question's name (lower case, without the
// root's dot) and the answers of class IN of msg, a DNS response, in one
// pass: the answers stop at the first that does not read whole.
func parseDNSResponse(msg []byte) (string, []dnsAnswer, error) {
	if len(msg) < 12 {
		return "", nil, fmt.Errorf("message of %d bytes", len(msg))
	}
	qr, qd, an := msg[2]&0x80 != 0, binary.BigEndian.Uint16(msg[4:]), binary.BigEndian.Uint16(msg[6:])
	if !qr || qd != 1 {
		return "", nil, fmt.Errorf("qr %v, %d questions", qr, qd)
	}
	q, off, err := readDNSName(msg, 12)
	if err != nil {
		return "", nil, fmt.Errorf("question: %w", err)
	}
	if off+4 > len(msg) {
		return "", nil, errors.New("question cut short")
	}
	if !validHostName([]byte(q)) {
		return "", nil, fmt.Errorf("question %q: not a host name", q)
	}
	off += 4
	var answers []dnsAnswer
	for range an {
		owner, next, err := readDNSName(msg, off)
		if err != nil || next+10 > len(msg) {
			break
		}
		typ, class := binary.BigEndian.Uint16(msg[next:]), binary.BigEndian.Uint16(msg[next+2:])
		ttl, n := binary.BigEndian.Uint32(msg[next+4:]), int(binary.BigEndian.Uint16(msg[next+8:]))
		rdata := next + 10
		if rdata+n > len(msg) {
			break
		}
		off = rdata + n
		if class != dnsClassIN {
			continue
		}
		a := dnsAnswer{owner: owner, typ: typ, ttl: ttl}
		switch typ {
		case dnsTypeA, dnsTypeAAAA:
			addr, ok := netip.AddrFromSlice(msg[rdata:off])
			if !ok || (typ == dnsTypeA) != (n == 4) {
				continue
			}
			a.addr = addr.Unmap()
		case dnsTypeCNAME:
			target, end, err := readDNSName(msg, rdata)
			if err != nil || end != off {
				continue
			}
			a.target = target
		default:
			continue
		}
		answers = append(answers, a)
	}
	return q, answers, nil
}

// readDNSName reads the name at off in msg, following compression
// pointers (RFC 1035 4.1.4) only backwards, so that a loop cannot form. It
// returns the name in lower case without the root's dot, and the offset
// past the name where it starts (past its first pointer, if any).
func readDNSName(msg []byte, off int) (string, int, error) {
	var (
		name  []byte
		next  = -1
		start = off
	)
	for {
		if off >= len(msg) {
			return "", 0, errors.New("name cut short")
		}
		l := int(msg[off])
		switch {
		case l == 0:
			if next < 0 {
				next = off + 1
			}
			return strings.ToLower(string(name)), next, nil
		case l&0xc0 == 0xc0:
			if off+1 >= len(msg) {
				return "", 0, errors.New("name cut short")
			}
			ptr := (l&0x3f)<<8 | int(msg[off+1])
			if ptr >= start {
				return "", 0, fmt.Errorf("name pointer %d not before %d", ptr, start)
			}
			if next < 0 {
				next = off + 2
			}
			off, start = ptr, ptr
		case l&0xc0 != 0:
			return "", 0, fmt.Errorf("label type %#x", l&0xc0)
		default:
			if off+1+l > len(msg) {
				return "", 0, errors.New("name cut short")
			}
			if len(name)+1+l > 255 {
				return "", 0, errors.New("name longer than 255 bytes")
			}
			if len(name) > 0 {
				name = append(name, '.')
			}
			name = append(name, msg[off+1:off+1+l]...)
			off += 1 + l
		}
	}
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

// nameDecoder turns name events into names; it keeps its event to decode
// without allocating one per event.
type nameDecoder struct {
	ev bpfNameEvent
	// unchained counts the A and AAAA records that DNS answers did not
	// tie to their question (see DecodeDNSNames).
	unchained uint64
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
		names, unchained, err := DecodeDNSNames(data)
		nd.unchained += uint64(unchained)
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
// Events that do not decode are counted by bad, and the DNS records that
// their answers did not tie to the question by unchained.
func readNames(ctx context.Context, m *ebpf.Map, add func(model.Name), bad func(), unchained func(n uint64)) error {
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
		if nd.unchained > 0 {
			unchained(nd.unchained)
			nd.unchained = 0
		}
		if err != nil {
			bad()
			continue
		}
		for _, n := range names {
			add(n)
		}
	}
}
