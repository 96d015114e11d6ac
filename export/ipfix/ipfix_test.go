package ipfix

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/flowmap/flowmap/export"
	"github.com/flowmap/flowmap/model"
)

// message is a decoded IPFIX message: its header's fields, its template
// IDs and its data records, each as its elements' values by (pen, id).
type message struct {
	length    int
	seq       uint32
	domain    uint32
	templates []uint16
	records   []map[[2]uint32][]byte
}

// decoder decodes messages with the templates it was sent.
type decoder struct {
	templates map[uint16][]field
}

func (d *decoder) decode(t *testing.T, b []byte) message {
	t.Helper()
	if len(b) < headerLen || binary.BigEndian.Uint16(b) != 10 {
		t.Fatalf("message % x: not IPFIX version 10", b[:min(len(b), 16)])
	}
	m := message{length: int(binary.BigEndian.Uint16(b[2:])), seq: binary.BigEndian.Uint32(b[8:]), domain: binary.BigEndian.Uint32(b[12:])}
	if m.length != len(b) {
		t.Fatalf("message length %d, want %d", m.length, len(b))
	}
	for p := b[headerLen:]; len(p) > 0; {
		id, n := binary.BigEndian.Uint16(p), int(binary.BigEndian.Uint16(p[2:]))
		set := p[setHeaderLen:n]
		p = p[n:]
		if id == setTemplate {
			for len(set) > 0 {
				tid, count := binary.BigEndian.Uint16(set), int(binary.BigEndian.Uint16(set[2:]))
				set = set[4:]
				var fs []field
				for range count {
					f := field{id: binary.BigEndian.Uint16(set) &^ 0x8000, length: binary.BigEndian.Uint16(set[2:])}
					if binary.BigEndian.Uint16(set)&0x8000 != 0 {
						f.pen = binary.BigEndian.Uint32(set[4:])
						set = set[4:]
					}
					set = set[4:]
					fs = append(fs, f)
				}
				d.templates[tid] = fs
				m.templates = append(m.templates, tid)
			}
			continue
		}
		fs, ok := d.templates[id]
		if !ok {
			t.Fatalf("data set of template %d before its template", id)
		}
		for len(set) > 0 {
			r := map[[2]uint32][]byte{}
			for _, f := range fs {
				n := int(f.length)
				if f.length == varLen {
					n, set = int(set[0]), set[1:]
					if n == 255 {
						n, set = int(binary.BigEndian.Uint16(set)), set[2:]
					}
				}
				r[[2]uint32{f.pen, uint32(f.id)}] = set[:n]
				set = set[n:]
			}
			m.records = append(m.records, r)
		}
	}
	return m
}

func be(b []byte) uint64 {
	var v uint64
	for _, c := range b {
		v = v<<8 | uint64(c)
	}
	return v
}

// TestEncode decodes what the encoder writes: the IANA, biflow and
// flowmap elements of each flow, messages within their size, and the
// sequence numbers counting data records.
func TestEncode(t *testing.T) {
	fs := testFlows()
	fs[0].L7 = &model.L7{Protocol: model.L7HTTP, Latency: model.Histogram{Sum: 3 * time.Millisecond}}
	fs[0].L7.Methods[model.MethodGET] = 7
	fs[0].L7.Statuses[5] = 2
	fs[0].HandshakeRTT = 250 * time.Microsecond
	fs[0].Forward.Retransmits = 3
	fs[0].SrcIf.Index = 12
	fs[0].Health = &model.Health{Attempts: 5, SYNRetries: 4, Refused: 1, TimedOut: 2, ResetByServer: 1, Closed: 2,
		Unreachable: 1, Drops: map[string]uint64{"NO_SOCKET": 1, "NETFILTER_DROP": 6, "TCP_LISTEN_OVERFLOW": 1},
		RTTSum: 40 * time.Millisecond, RTTSamples: 2}
	fs[2].Health = &model.Health{Attempts: 1, Established: 1}
	icmp := fs[2]
	icmp.Proto, icmp.SrcPort, icmp.DstPort = model.ProtoICMP, 8, 0
	fs = append(fs, icmp)
	for i := range 100 {
		f := fs[1]
		f.SrcPort = uint16(1000 + i)
		fs = append(fs, f)
	}
	e := newEncoder(7, 1400)
	msgs := e.encode(nil, fs, 4, time.Unix(1_800_000_000, 0), true)
	d := &decoder{templates: map[uint16][]field{}}
	var recs []map[[2]uint32][]byte
	for i, b := range msgs {
		if len(b) > 1400 {
			t.Errorf("message %d is %d bytes, want at most 1400", i, len(b))
		}
		m := d.decode(t, b)
		if m.domain != 7 || m.seq != uint32(len(recs)) {
			t.Errorf("message %d: domain %d seq %d, want 7 and %d", i, m.domain, m.seq, len(recs))
		}
		if (i == 0) != (len(m.templates) == len(templates)) {
			t.Errorf("message %d has templates %v, want all in the first only", i, m.templates)
		}
		recs = append(recs, m.records...)
	}
	if len(recs) != len(fs) {
		t.Fatalf("decoded %d records, want %d", len(recs), len(fs))
	}
	if e.seq != uint32(len(fs)) {
		t.Errorf("sequence after = %d, want %d", e.seq, len(fs))
	}
	iana := func(id uint32) [2]uint32 { return [2]uint32{0, id} }
	rev := func(id uint32) [2]uint32 { return [2]uint32{reversePEN, id} }
	own := func(id uint32) [2]uint32 { return [2]uint32{PEN, id} }
	r := recs[0]
	for _, c := range []struct {
		name string
		key  [2]uint32
		want uint64
	}{
		{"octetDeltaCount", iana(1), 100_000},
		{"packetDeltaCount", iana(2), 80},
		{"protocolIdentifier", iana(4), 6},
		{"tcpControlBits", iana(6), 0x12},
		{"sourceTransportPort", iana(7), 40001},
		{"sourceIPv4Address", iana(8), 0xc000020a},
		{"destinationTransportPort", iana(11), 5432},
		{"ingressInterface", iana(10), 12},
		{"flowStartMilliseconds", iana(152), uint64(fs[0].FirstSeen.UnixMilli())},
		{"flowEndMilliseconds", iana(153), uint64(fs[0].LastSeen.UnixMilli())},
		{"reverseOctetDeltaCount", rev(1), 5_000_000_000},
		{"reversePacketDeltaCount", rev(2), 3_500_000},
		{"reverseTcpControlBits", rev(6), 0x12},
		{"samplingRate", own(eSamplingRate), 4},
		{"retransmits", own(eRetransmits), 3},
		{"handshakeRtt", own(eHandshakeRTT), 250},
		{"l7Requests", own(eL7Requests), 7},
		{"l7Responses", own(eL7Responses), 2},
		{"l7Errors", own(eL7Errors), 2},
		{"l7LatencySum", own(eL7LatencySum), 3000},
		{"flowEndReason", iana(136), endDetected},
		{"connAttempts", own(eConnAttempts), 5},
		{"synRetries", own(eSYNRetries), 4},
		{"connEstablished", own(eConnEstablished), 0},
		{"connRefused", own(eConnRefused), 1},
		{"connTimedOut", own(eConnTimedOut), 2},
		{"resetByClient", own(eResetByClient), 0},
		{"resetByServer", own(eResetByServer), 1},
		{"connClosed", own(eConnClosed), 2},
		{"icmpUnreachable", own(eICMPUnreachable), 1},
		{"icmpTimeExceeded", own(eICMPTTL), 0},
		{"drops", own(eDrops), 8},
		{"smoothedRtt", own(eSmoothedRTT), 20_000},
	} {
		if got := be(r[c.key]); got != c.want {
			t.Errorf("%s = %d, want %d", c.name, got, c.want)
		}
	}
	for _, c := range []struct {
		name string
		key  [2]uint32
		want string
	}{
		{"l7Protocol", own(eL7Protocol), "http"},
		{"sourceKind", own(eSrcKind), "pod"},
		{"sourceName", own(eSrcName), "client-7d9"},
		{"destinationNamespace", own(eDstNamespace), "shop"},
		{"dropReasons", own(eDropReasons), "NETFILTER_DROP=6 NO_SOCKET=1 TCP_LISTEN_OVERFLOW=1"},
		{"failure", own(eFailure), "drop:NETFILTER_DROP"},
	} {
		if got := string(r[c.key]); got != c.want {
			t.Errorf("%s = %q, want %q", c.name, got, c.want)
		}
	}
	// A flow without health has none of its elements; one whose
	// connection is open was exported at the interval's end.
	if _, ok := recs[1][own(eConnAttempts)]; ok {
		t.Errorf("a flow without health has element %d", eConnAttempts)
	}
	if got := be(recs[2][iana(136)]); got != endActiveTimeout {
		t.Errorf("an open connection's flowEndReason = %d, want %d", got, endActiveTimeout)
	}
	if got := be(recs[2][own(eConnEstablished)]); got != 1 {
		t.Errorf("connEstablished = %d, want 1", got)
	}
	if got := len(recs[1][iana(27)]); got != 16 {
		t.Errorf("IPv6 flow's sourceIPv6Address has %d bytes, want 16", got)
	}
	if got, want := be(recs[3][iana(32)]), uint64(8<<8); got != want {
		t.Errorf("icmpTypeCodeIPv4 = %#x, want %#x", got, want)
	}
	if got := be(recs[3][iana(7)]); got != 0 {
		t.Errorf("ICMP sourceTransportPort = %d, want 0", got)
	}
}

// TestStr: variable-length strings take one length byte below 255 and
// three from 255 on.
func TestStr(t *testing.T) {
	for _, n := range []int{0, 254, 255, 70000} {
		s := string(make([]byte, n))
		b := str(nil, s)
		want := min(n, 0xffff)
		hdr := 1
		if want >= 255 {
			hdr = 3
		}
		if len(b) != hdr+want {
			t.Errorf("str(%d bytes) = %d bytes, want %d", n, len(b), hdr+want)
		}
	}
}

// TestUDPTemplates: over UDP the templates lead the first message and come
// again after TemplateInterval or TemplateMessages messages.
func TestUDPTemplates(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	now := time.Unix(1_800_000_000, 0)
	e, err := New(Options{URL: "udp://" + pc.LocalAddr().String(), TemplateInterval: time.Minute, TemplateMessages: 4,
		Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(context.Background())
	d := &decoder{templates: map[uint16][]field{}}
	buf := make([]byte, 65536)
	var got []bool
	for i, step := range []time.Duration{0, time.Second, time.Second, time.Second, time.Second, time.Minute, time.Second} {
		now = now.Add(step)
		if err := e.Export(context.Background(), export.Batch{Flows: testFlows()[:1], SampleRate: 1}); err != nil {
			t.Fatalf("Export %d: %v", i, err)
		}
		// The templates lead the record, in its message or, where
		// both do not fit in one, in a message before it.
		templates := false
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				t.Fatal(err)
			}
			m := d.decode(t, buf[:n])
			templates = templates || len(m.templates) > 0
			if len(m.records) > 0 {
				break
			}
		}
		got = append(got, templates)
	}
	// The four templates and a record do not fit in 1400 bytes, so the
	// templates go in a message of their own, which counts: 1: first (2
	// messages); 4: after 4 messages; 6: a minute on.
	want := []bool{true, false, false, true, false, true, false}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("messages with templates %v, want %v", got, want)
			break
		}
	}
}

// TestTCP: over TCP the templates lead each connection once; a collector
// that restarts gets them again on the next connection, and the batch
// whose write failed is sent whole on it.
func TestTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	e, err := New(Options{URL: "tcp://" + ln.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(context.Background())
	read := func(r *bufio.Reader, d *decoder) message {
		hdr := make([]byte, 4)
		if _, err := io.ReadFull(r, hdr); err != nil {
			t.Fatalf("read message: %v", err)
		}
		b := make([]byte, binary.BigEndian.Uint16(hdr[2:]))
		copy(b, hdr)
		if _, err := io.ReadFull(r, b[4:]); err != nil {
			t.Fatalf("read message: %v", err)
		}
		return d.decode(t, b)
	}
	b := export.Batch{Flows: testFlows(), SampleRate: 1}
	errs := make(chan error, 1)
	go func() { errs <- e.Export(context.Background(), b) }()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errs; err != nil {
		t.Fatalf("Export: %v", err)
	}
	if err := e.Export(context.Background(), b); err != nil {
		t.Fatalf("Export: %v", err)
	}
	r, d := bufio.NewReader(c), &decoder{templates: map[uint16][]field{}}
	if m := read(r, d); len(m.templates) != len(templates) || len(m.records) != 3 {
		t.Errorf("first message: %d templates, %d records, want 4 and 3", len(m.templates), len(m.records))
	}
	if m := read(r, d); len(m.templates) != 0 || len(m.records) != 3 || m.seq != 3 {
		t.Errorf("second message: %d templates, %d records, seq %d, want 0, 3 and 3", len(m.templates), len(m.records), m.seq)
	}
	// The collector restarts: a write fails, at the latest the second
	// after the peer's reset.
	c.Close()
	var failed bool
	for range 10 {
		if err := e.Export(context.Background(), b); err != nil {
			failed = true
			break
		}
	}
	if !failed {
		t.Fatal("Export to a closed connection did not fail")
	}
	go func() { errs <- e.Export(context.Background(), b) }()
	c, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := <-errs; err != nil {
		t.Fatalf("Export after reconnect: %v", err)
	}
	if m := read(bufio.NewReader(c), &decoder{templates: map[uint16][]field{}}); len(m.templates) != len(templates) || len(m.records) != 3 {
		t.Errorf("first message of the new connection: %d templates, %d records, want 4 and 3", len(m.templates), len(m.records))
	}
}

func TestNewURL(t *testing.T) {
	for _, tc := range []struct {
		url string
		ok  bool
	}{
		{"udp://127.0.0.1:4739", true},
		{"tcp://collector:4739", true},
		{"tls://collector:4740", true},
		{"udp://127.0.0.1", false},
		{"http://collector:4739", false},
		{"collector:4739", false},
	} {
		if _, err := New(Options{URL: tc.url}); (err == nil) != tc.ok {
			t.Errorf("New(%q) error = %v, want ok %v", tc.url, err, tc.ok)
		}
	}
}
