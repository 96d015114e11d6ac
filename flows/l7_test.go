package flows

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
)

// These tests run the L7 parsers (bpf/headers/l7) through BPF_PROG_TEST_RUN on
// gopacket-built frames, as bpf_test.go does the L4 path, and read the L7
// maps and the l7_names ring buffer back.

const (
	l7Cli, l7Srv   = "198.51.100.2", "198.51.100.3"
	l7Cli6, l7Srv6 = "2001:db8::2", "2001:db8::3"
)

// resetL7 does what resetObjects does and drains the ring buffer.
func resetL7(t testing.TB, objs *bpfObjects, rd *ringbuf.Reader) {
	t.Helper()
	resetObjects(t, objs)
	readEvents(t, rd)
}

// readEvents returns the ring buffer's waiting events.
func readEvents(t testing.TB, rd *ringbuf.Reader) [][]byte {
	t.Helper()
	var out [][]byte
	rd.SetDeadline(time.Now().Add(10 * time.Millisecond))
	for {
		rec, err := rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			t.Fatalf("read l7_names: %v", err)
		}
		out = append(out, rec.RawSample)
	}
}

func tcpPayload(t testing.TB, v6 bool, src, dst string, sport, dport uint16, payload []byte) []byte {
	t.Helper()
	if v6 {
		return buildFrame(t, ethL(layers.EthernetTypeIPv6), ip6L(src, dst, layers.IPProtocolTCP),
			tcpL(sport, dport, hdrPSH|hdrACK), gopacket.Payload(payload))
	}
	return buildFrame(t, ethL(layers.EthernetTypeIPv4), ip4L(src, dst, layers.IPProtocolTCP),
		tcpL(sport, dport, hdrPSH|hdrACK), gopacket.Payload(payload))
}

func udpPayload(t testing.TB, src, dst string, sport, dport uint16, payload []byte) []byte {
	t.Helper()
	return buildFrame(t, ethL(layers.EthernetTypeIPv4), ip4L(src, dst, layers.IPProtocolUDP),
		udpL(sport, dport), gopacket.Payload(payload))
}

// dnsMsg serializes a DNS message for name with answers (A records).
func dnsMsg(t testing.TB, id uint16, response bool, rcode layers.DNSResponseCode, name string, answers ...string) []byte {
	t.Helper()
	d := &layers.DNS{
		ID: id, QR: response, OpCode: layers.DNSOpCodeQuery, RD: true, RA: response, ResponseCode: rcode,
		Questions: []layers.DNSQuestion{{Name: []byte(name), Type: layers.DNSTypeA, Class: layers.DNSClassIN}},
	}
	for _, a := range answers {
		d.Answers = append(d.Answers, layers.DNSResourceRecord{
			Name: []byte(name), Type: layers.DNSTypeA, Class: layers.DNSClassIN, TTL: 300, IP: net.ParseIP(a).To4(),
		})
	}
	buf := gopacket.NewSerializeBuffer()
	if err := d.SerializeTo(buf, gopacket.SerializeOptions{FixLengths: true}); err != nil {
		t.Fatalf("serialize dns: %v", err)
	}
	return bytes.Clone(buf.Bytes())
}

// clientHello returns the first TLS record that crypto/tls sends to name.
func clientHello(t testing.TB, name string) []byte {
	t.Helper()
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	go tls.Client(c, &tls.Config{ServerName: name}).Handshake()
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 5)
	if _, err := ioReadFull(s, hdr); err != nil {
		t.Fatalf("read client hello: %v", err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := ioReadFull(s, body); err != nil {
		t.Fatalf("read client hello: %v", err)
	}
	return append(hdr, body...)
}

func ioReadFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// l7Want is what one flow's L7 entry should hold; the latency histogram
// is checked for its count only.
type l7Want struct {
	proto     model.L7Protocol
	methods   map[model.Method]uint32
	statuses  map[int]uint32
	queries   uint32
	rcodes    map[int]uint32
	unmatched uint32
	latencies uint32
}

func (w l7Want) l7() model.L7 {
	l := model.L7{Protocol: w.proto, Queries: uint64(w.queries), Unmatched: uint64(w.unmatched)}
	for m, n := range w.methods {
		l.Methods[m] = uint64(n)
	}
	for c, n := range w.statuses {
		l.Statuses[c] = uint64(n)
	}
	for c, n := range w.rcodes {
		l.Rcodes[c] = uint64(n)
	}
	return l
}

// readL7 returns the L7 maps of half a (b false) or b by client-to-server
// key, IPv4 keys IPv4-mapped.
func readL7(t testing.TB, objs *bpfObjects, b bool) map[bpfFlowKey]model.L7 {
	t.Helper()
	m4, m6 := objs.L7s4A, objs.L7s6A
	if b {
		m4, m6 = objs.L7s4B, objs.L7s6B
	}
	got := map[bpfFlowKey]model.L7{}
	add := func(k bpfFlowKey, v bpfL7Stats) {
		l := got[k]
		addL7Stats(&l, &v)
		got[k] = l
	}
	var (
		k4 bpfFlowKey4
		k  bpfFlowKey
		v  bpfL7Stats
	)
	it := m4.Iterate()
	for it.Next(&k4, &v) {
		add(k4.mapped(), v)
	}
	if err := it.Err(); err != nil {
		t.Fatalf("iterate %v: %v", m4, err)
	}
	it = m6.Iterate()
	for it.Next(&k, &v) {
		add(k, v)
	}
	if err := it.Err(); err != nil {
		t.Fatalf("iterate %v: %v", m6, err)
	}
	return got
}

// checkL7 compares the L7 maps of half a with want, by client-to-server
// key.
func checkL7(t testing.TB, objs *bpfObjects, want map[bpfFlowKey]l7Want, before time.Duration) {
	t.Helper()
	got := readL7(t, objs, false)
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("L7 half a: no entry for %s", keyString(k))
			continue
		}
		delete(got, k)
		n := g.Latency.Count()
		if n != uint64(w.latencies) {
			t.Errorf("%s: %d latencies, want %d", keyString(k), n, w.latencies)
		}
		// Pipelined requests wait together: each latency is within the
		// run, their sum within n runs.
		if max := time.Duration(n) * before; n > 0 && (g.Latency.Sum == 0 || g.Latency.Sum > max) {
			t.Errorf("%s: latency sum %v, want within (0, %v]", keyString(k), g.Latency.Sum, max)
		}
		g.Latency = model.Histogram{}
		if ws := w.l7(); g != ws {
			t.Errorf("%s:\ngot  %+v\nwant %+v", keyString(k), g, ws)
		}
	}
	for k, g := range got {
		t.Errorf("L7 half a: unexpected entry %s: %+v", keyString(k), g)
	}
}

func TestBPFL7(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	objs := loadTestObjects(t, 0)
	rd, err := ringbuf.NewReader(objs.L7Names)
	if err != nil {
		t.Fatalf("open l7_names: %v", err)
	}
	t.Cleanup(func() { rd.Close() })

	up := flowKey(l7Cli, l7Srv, 42000, 80, layers.IPProtocolTCP, 0)
	up6 := flowKey(l7Cli6, l7Srv6, 42000, 80, layers.IPProtocolTCP, 0)
	req := func(s string) []byte { return tcpPayload(t, false, l7Cli, l7Srv, 42000, 80, []byte(s)) }
	resp := func(s string) []byte { return tcpPayload(t, false, l7Srv, l7Cli, 80, 42000, []byte(s)) }
	tcpTo := func(port uint16, s []byte) []byte { return tcpPayload(t, false, l7Cli, l7Srv, 42000, port, s) }
	tcpFrom := func(port uint16, s []byte) []byte { return tcpPayload(t, false, l7Srv, l7Cli, port, 42000, s) }
	const get = "GET /secret/path?q=1 HTTP/1.1\r\nHost: shop\r\nCookie: x\r\n\r\n"
	const ok200 = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
	dnsUp := flowKey(l7Cli, l7Srv, 41000, 53, layers.IPProtocolUDP, 0)
	dnsQ := func(id uint16) []byte {
		return udpPayload(t, l7Cli, l7Srv, 41000, 53, dnsMsg(t, id, false, 0, "shop.example"))
	}
	dnsR := func(id uint16, rcode layers.DNSResponseCode, answers ...string) []byte {
		return udpPayload(t, l7Srv, l7Cli, 53, 41000, dnsMsg(t, id, true, rcode, "shop.example", answers...))
	}
	// A query and an answer for another name, on dnsUp.
	dnsQName := func(id uint16, name string) []byte {
		return udpPayload(t, l7Cli, l7Srv, 41000, 53, dnsMsg(t, id, false, 0, name))
	}
	dnsRName := func(id uint16, name string, answers ...string) []byte {
		return udpPayload(t, l7Srv, l7Cli, 53, 41000, dnsMsg(t, id, true, 0, name, answers...))
	}
	// A name of 4 + 30*5 = 154 bytes: longer than the question bytes
	// the programs compare (DNS_QMAX).
	longName := "shop" + strings.Repeat(".abcd", 30)
	udp6 := func(src, dst string, sport, dport uint16, payload []byte) []byte {
		return buildFrame(t, ethL(layers.EthernetTypeIPv6), ip6L(src, dst, layers.IPProtocolUDP),
			udpL(sport, dport), gopacket.Payload(payload))
	}
	syn6 := buildFrame(t, ethL(layers.EthernetTypeIPv6), ip6L(l7Cli6, l7Srv6, layers.IPProtocolTCP), tcpL(42000, 443, hdrSYN))
	syn := func(sport, dport uint16) []byte {
		return buildFrame(t, ethL(layers.EthernetTypeIPv4), ip4L(l7Cli, l7Srv, layers.IPProtocolTCP), tcpL(sport, dport, hdrSYN))
	}
	dnsTCPUp := flowKey(l7Cli, l7Srv, 42000, 53, layers.IPProtocolTCP, 0)
	withLen := func(m []byte) []byte { return append([]byte{byte(len(m) >> 8), byte(len(m))}, m...) }
	hello := clientHello(t, "api.example.com")

	cases := []struct {
		name     string
		frames   [][]byte
		want     map[bpfFlowKey]l7Want
		names    []string              // the kinds of name events, in order
		dnsName  string                // the name of the DNS names, if not shop.example
		v6       bool                  // the names' client is l7Cli6, not l7Cli
		counters map[bpfCounter]uint64 // the counters not 0
	}{
		{
			name:   "http request and response",
			frames: [][]byte{req(get), resp(ok200)},
			want: map[bpfFlowKey]l7Want{up: {proto: model.L7HTTP, methods: map[model.Method]uint32{model.MethodGET: 1},
				statuses: map[int]uint32{2: 1}, latencies: 1}},
		},
		{
			name: "http over ipv6",
			frames: [][]byte{tcpPayload(t, true, l7Cli6, l7Srv6, 42000, 80, []byte("DELETE /x HTTP/1.1\r\n\r\n")),
				tcpPayload(t, true, l7Srv6, l7Cli6, 80, 42000, []byte("HTTP/1.0 404 Not Found\r\n\r\n"))},
			want: map[bpfFlowKey]l7Want{up6: {proto: model.L7HTTP, methods: map[model.Method]uint32{model.MethodDELETE: 1},
				statuses: map[int]uint32{4: 1}, latencies: 1}},
		},
		{
			name: "pipelined and keep-alive",
			frames: [][]byte{
				req("GET /a HTTP/1.1\r\n\r\n"), req("POST /b HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), req("PUT /c HTTP/1.1\r\n\r\n"),
				resp("HTTP/1.1 200 OK\r\n\r\n"), resp("HTTP/1.1 404 Not Found\r\n\r\n"), resp("HTTP/1.1 500 Oops\r\n\r\n"),
				req("HEAD / HTTP/1.1\r\n\r\n"), resp("HTTP/1.1 204 No Content\r\n\r\n"),
				req("PATCH /d HTTP/1.1\r\n\r\n"), resp("HTTP/1.1 302 Found\r\n\r\n"),
				req("OPTIONS * HTTP/1.1\r\n\r\n"), resp("HTTP/1.1 200 OK\r\n\r\n"),
			},
			want: map[bpfFlowKey]l7Want{up: {proto: model.L7HTTP,
				methods:   map[model.Method]uint32{model.MethodGET: 1, model.MethodPOST: 1, model.MethodPUT: 1, model.MethodHEAD: 1, model.MethodPATCH: 1, model.MethodOPTIONS: 1},
				statuses:  map[int]uint32{2: 3, 3: 1, 4: 1, 5: 1},
				latencies: 6}},
		},
		{
			name: "split across segments",
			frames: [][]byte{
				req("POST /upload HTTP/1.1\r\nHost: shop\r\n"), req("Content-Length: 10\r\n\r\n"), req("GET-like body"),
				resp("HTTP/1.1 201 Created\r\nContent-Length: 9000\r\n\r\n"), resp("HTTP/1.1 is what the body says"),
				resp("<html>…"),
			},
			want: map[bpfFlowKey]l7Want{up: {proto: model.L7HTTP, methods: map[model.Method]uint32{model.MethodPOST: 1},
				statuses: map[int]uint32{2: 1}, latencies: 1}},
		},
		{
			name:   "100 continue then the response",
			frames: [][]byte{req("PUT /big HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"), resp("HTTP/1.1 100 Continue\r\n\r\n"), resp(ok200)},
			want: map[bpfFlowKey]l7Want{up: {proto: model.L7HTTP, methods: map[model.Method]uint32{model.MethodPUT: 1},
				statuses: map[int]uint32{1: 1, 2: 1}, latencies: 1}},
		},
		{
			name:   "response without request",
			frames: [][]byte{resp(ok200)},
			want:   map[bpfFlowKey]l7Want{up: {proto: model.L7HTTP, statuses: map[int]uint32{2: 1}, unmatched: 1}},
		},
		{
			name: "garbage that looks almost like http",
			frames: [][]byte{
				req("GETX / HTTP/1.1\r\n"), req("GET"), req("get / HTTP/1.1\r\n"), req("GET  / HTTP/1.1"), req("POST/ HTTP/1.1"),
				req("DELETEX / HTTP"), req("PATCHY / "), req("CONNECTED x"), req("HEAD\r\n"),
				resp("HTTP/2.0 200 OK\r\n"), resp("HTTP/1.1 600 X\r\n"), resp("HTTP/1.1 20 OK\r\n"), resp("HTTP/1.2 200 OK\r\n"),
				resp("HTTP/1.1 200"), resp("HTTP/1.1 2x0 OK\r\n"), resp("HTTP/1.1 0200 OK"), resp("HTTPS/1.1 200 OK"),
			},
		},
		{
			name:   "dns query and answer",
			frames: [][]byte{dnsQ(0x1234), dnsR(0x1234, layers.DNSResponseCodeNoErr, "203.0.113.9", "203.0.113.10")},
			want: map[bpfFlowKey]l7Want{dnsUp: {proto: model.L7DNS, queries: 1, rcodes: map[int]uint32{0: 1},
				latencies: 1}},
			names: []string{"dns"},
		},
		{
			name: "dns ids match their own responses",
			frames: [][]byte{dnsQ(1), dnsQ(2), dnsR(2, layers.DNSResponseCodeNXDomain), dnsR(1, layers.DNSResponseCodeServFail),
				dnsR(3, layers.DNSResponseCodeNoErr, "203.0.113.9"), dnsR(1, layers.DNSResponseCodeRefused)},
			want: map[bpfFlowKey]l7Want{dnsUp: {proto: model.L7DNS, queries: 2,
				rcodes: map[int]uint32{0: 1, 2: 1, 3: 1, 5: 1}, unmatched: 2, latencies: 2}},
			// Id 3's answer matches no query: it names nothing.
			counters: map[bpfCounter]uint64{bpfCounterCOUNTER_NAMES_UNMATCHED: 1},
		},
		{
			name:     "dns answer without a query",
			frames:   [][]byte{dnsR(0x1234, layers.DNSResponseCodeNoErr, "203.0.113.9")},
			want:     map[bpfFlowKey]l7Want{dnsUp: {proto: model.L7DNS, rcodes: map[int]uint32{0: 1}, unmatched: 1}},
			counters: map[bpfCounter]uint64{bpfCounterCOUNTER_NAMES_UNMATCHED: 1},
		},
		{
			// Forged answers race the real one: another id, another
			// question, another client port, another server; then the
			// real answer, which alone names.
			name: "dns forged answers before the real one",
			frames: [][]byte{dnsQ(5),
				dnsR(6, layers.DNSResponseCodeNoErr, "192.0.2.66"),
				dnsRName(5, "s3.amazonaws.com", "192.0.2.66"),
				udpPayload(t, l7Srv, l7Cli, 53, 41001, dnsMsg(t, 5, true, 0, "shop.example", "192.0.2.66")),
				udpPayload(t, "198.51.100.4", l7Cli, 53, 41000, dnsMsg(t, 5, true, 0, "shop.example", "192.0.2.66")),
				dnsR(5, layers.DNSResponseCodeNoErr, "203.0.113.9"),
				dnsR(5, layers.DNSResponseCodeNoErr, "192.0.2.66"), // once answered, no more
			},
			want: map[bpfFlowKey]l7Want{
				dnsUp: {proto: model.L7DNS, queries: 1, rcodes: map[int]uint32{0: 4}, unmatched: 3, latencies: 1},
				flowKey(l7Cli, l7Srv, 41001, 53, layers.IPProtocolUDP, 0):          {proto: model.L7DNS, rcodes: map[int]uint32{0: 1}, unmatched: 1},
				flowKey(l7Cli, "198.51.100.4", 41000, 53, layers.IPProtocolUDP, 0): {proto: model.L7DNS, rcodes: map[int]uint32{0: 1}, unmatched: 1},
			},
			names:    []string{"dns"},
			counters: map[bpfCounter]uint64{bpfCounterCOUNTER_NAMES_UNMATCHED: 5},
		},
		{
			// The question's bytes, case included (0x20 randomisation):
			// a resolver repeats them as asked.
			name:   "dns question case",
			frames: [][]byte{dnsQName(8, "Shop.Example"), dnsR(8, layers.DNSResponseCodeNoErr, "203.0.113.9"), dnsRName(8, "Shop.Example", "203.0.113.9")},
			want: map[bpfFlowKey]l7Want{dnsUp: {proto: model.L7DNS, queries: 1, rcodes: map[int]uint32{0: 2},
				unmatched: 1, latencies: 1}},
			names:    []string{"dns"},
			counters: map[bpfCounter]uint64{bpfCounterCOUNTER_NAMES_UNMATCHED: 1},
		},
		{
			// The IPv6 keys: a forged answer (another id), the real
			// one; a ClientHello twice after the client's SYN.
			name: "dns and tls over ipv6",
			frames: [][]byte{
				udp6(l7Cli6, l7Srv6, 41000, 53, dnsMsg(t, 4, false, 0, "shop.example")),
				udp6(l7Srv6, l7Cli6, 53, 41000, dnsMsg(t, 5, true, 0, "shop.example", "192.0.2.66")),
				udp6(l7Srv6, l7Cli6, 53, 41000, dnsMsg(t, 4, true, 0, "shop.example", "203.0.113.9")),
				syn6,
				tcpPayload(t, true, l7Cli6, l7Srv6, 42000, 443, hello),
				tcpPayload(t, true, l7Cli6, l7Srv6, 42000, 443, hello),
			},
			want: map[bpfFlowKey]l7Want{
				flowKey(l7Cli6, l7Srv6, 41000, 53, layers.IPProtocolUDP, 0): {proto: model.L7DNS, queries: 1,
					rcodes: map[int]uint32{0: 2}, unmatched: 1, latencies: 1},
				flowKey(l7Cli6, l7Srv6, 42000, 443, layers.IPProtocolTCP, 0): {proto: model.L7TLS},
			},
			names: []string{"dns", "tls"},
			v6:    true,
			counters: map[bpfCounter]uint64{bpfCounterCOUNTER_NAMES_UNMATCHED: 1,
				bpfCounterCOUNTER_NAMES_NOT_CLIENT: 1},
		},
		{
			name:    "dns long question",
			frames:  [][]byte{dnsQName(9, longName), dnsRName(9, longName, "203.0.113.9")},
			want:    map[bpfFlowKey]l7Want{dnsUp: {proto: model.L7DNS, queries: 1, rcodes: map[int]uint32{0: 1}, latencies: 1}},
			names:   []string{"dns"},
			dnsName: longName,
		},
		{
			name: "dns truncated",
			frames: [][]byte{dnsQ(7), func() []byte {
				m := dnsMsg(t, 7, true, 0, "shop.example", "203.0.113.9", "203.0.113.10")
				m[2] |= 0x02 // TC
				return udpPayload(t, l7Srv, l7Cli, 53, 41000, m[:len(m)-6])
			}()},
			want:  map[bpfFlowKey]l7Want{dnsUp: {proto: model.L7DNS, queries: 1, rcodes: map[int]uint32{0: 1}, latencies: 1}},
			names: []string{"dns"},
		},
		{
			name: "dns over tcp",
			frames: [][]byte{tcpTo(53, withLen(dnsMsg(t, 9, false, 0, "shop.example"))),
				tcpFrom(53, withLen(dnsMsg(t, 9, true, 0, "shop.example", "203.0.113.9")))},
			want:  map[bpfFlowKey]l7Want{dnsTCPUp: {proto: model.L7DNS, queries: 1, rcodes: map[int]uint32{0: 1}, latencies: 1}},
			names: []string{"dns"},
		},
		{
			name: "not dns",
			frames: [][]byte{
				udpPayload(t, l7Cli, l7Srv, 41000, 5353, dnsMsg(t, 1, false, 0, "shop.example")),          // another port
				udpPayload(t, l7Cli, l7Srv, 53, 41000, dnsMsg(t, 1, false, 0, "shop.example")),            // a query from port 53
				udpPayload(t, l7Cli, l7Srv, 41000, 53, []byte{1, 2, 3}),                                   // short
				udpPayload(t, l7Cli, l7Srv, 41000, 53, append([]byte{0, 1, 0x28, 0}, make([]byte, 8)...)), // opcode UPDATE
			},
		},
		{
			name:   "tls client hello",
			frames: [][]byte{syn(42000, 443), tcpTo(443, hello)},
			want:   map[bpfFlowKey]l7Want{flowKey(l7Cli, l7Srv, 42000, 443, layers.IPProtocolTCP, 0): {proto: model.L7TLS}},
			names:  []string{"tls"},
		},
		{
			name:     "tls client hello twice",
			frames:   [][]byte{syn(42000, 443), tcpTo(443, hello), tcpTo(443, hello)},
			want:     map[bpfFlowKey]l7Want{flowKey(l7Cli, l7Srv, 42000, 443, layers.IPProtocolTCP, 0): {proto: model.L7TLS}},
			names:    []string{"tls"},
			counters: map[bpfCounter]uint64{bpfCounterCOUNTER_NAMES_NOT_CLIENT: 1},
		},
		{
			name:     "tls client hello without a syn",
			frames:   [][]byte{tcpTo(443, hello)},
			want:     map[bpfFlowKey]l7Want{flowKey(l7Cli, l7Srv, 42000, 443, layers.IPProtocolTCP, 0): {proto: model.L7TLS}},
			counters: map[bpfCounter]uint64{bpfCounterCOUNTER_NAMES_NOT_CLIENT: 1},
		},
		{
			// The client opened the connection; a ClientHello from
			// the server's side names nothing.
			name:     "tls client hello from the server side",
			frames:   [][]byte{syn(42000, 443), tcpFrom(443, hello)},
			want:     map[bpfFlowKey]l7Want{flowKey(l7Srv, l7Cli, 443, 42000, layers.IPProtocolTCP, 0): {proto: model.L7TLS}},
			counters: map[bpfCounter]uint64{bpfCounterCOUNTER_NAMES_NOT_CLIENT: 1},
		},
		{
			name: "protocols by their first bytes",
			frames: [][]byte{
				tcpPayload(t, false, l7Cli, l7Srv, 42001, 8080, []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")),
				tcpPayload(t, false, l7Cli, l7Srv, 42002, 5432, []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}),
				tcpPayload(t, false, l7Srv, l7Cli, 3306, 42003, append([]byte{12, 0, 0, 0, 10}, "8.0.3\x00abcdef"...)[:16]),
				tcpPayload(t, false, l7Cli, l7Srv, 42004, 6379, []byte("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")),
				tcpPayload(t, false, l7Cli, l7Srv, 42005, 9092, []byte{0, 0, 0, 12, 0, 18, 0, 3, 0, 0, 0, 1, 0, 2, 'i', 'd'}),
				tcpPayload(t, false, l7Cli, l7Srv, 42006, 5001, bytes.Repeat([]byte{0xa5}, 1400)), // bulk data: nothing
				// Redis inline commands, to the Redis port only; and
				// the answer to PING, on any port.
				tcpPayload(t, false, l7Cli, l7Srv, 42007, 6379, []byte("PING\r\n")),
				tcpPayload(t, false, l7Cli, l7Srv, 42008, 6379, []byte("GET key\r\n")),
				tcpPayload(t, false, l7Cli, l7Srv, 42009, 6379, []byte("set averyverylongkey 1\r\n")),
				tcpPayload(t, false, l7Cli, l7Srv, 42010, 7000, []byte("PING\r\n")),
				tcpPayload(t, false, l7Srv, l7Cli, 7000, 42010, []byte("+PONG\r\n")),
				tcpPayload(t, false, l7Cli, l7Srv, 42011, 25, []byte("EHLO mail\r\n")),           // SMTP: nothing
				tcpPayload(t, false, l7Cli, l7Srv, 42012, 11211, []byte("get key\r\n")),          // memcached: nothing
				tcpPayload(t, false, l7Cli, l7Srv, 42013, 6379, []byte("12 PING\r\n")),           // not a word: nothing
				tcpPayload(t, false, l7Cli, l7Srv, 42014, 6379, []byte("averyveryverylongword")), // no end in sight: nothing
			},
			want: map[bpfFlowKey]l7Want{
				flowKey(l7Cli, l7Srv, 42001, 8080, layers.IPProtocolTCP, 0): {proto: model.L7HTTP2},
				flowKey(l7Cli, l7Srv, 42002, 5432, layers.IPProtocolTCP, 0): {proto: model.L7Postgres},
				flowKey(l7Cli, l7Srv, 42003, 3306, layers.IPProtocolTCP, 0): {proto: model.L7MySQL},
				flowKey(l7Cli, l7Srv, 42004, 6379, layers.IPProtocolTCP, 0): {proto: model.L7Redis},
				flowKey(l7Cli, l7Srv, 42005, 9092, layers.IPProtocolTCP, 0): {proto: model.L7Kafka},
				flowKey(l7Cli, l7Srv, 42007, 6379, layers.IPProtocolTCP, 0): {proto: model.L7Redis},
				flowKey(l7Cli, l7Srv, 42008, 6379, layers.IPProtocolTCP, 0): {proto: model.L7Redis},
				flowKey(l7Cli, l7Srv, 42009, 6379, layers.IPProtocolTCP, 0): {proto: model.L7Redis},
				flowKey(l7Cli, l7Srv, 42010, 7000, layers.IPProtocolTCP, 0): {proto: model.L7Redis},
			},
		},
	}
	for _, h := range testHooks(t, objs) {
		for _, tc := range cases {
			t.Run(h.name+"/"+tc.name, func(t *testing.T) {
				resetL7(t, objs, rd)
				start := time.Now()
				for _, f := range tc.frames {
					h.run(t, f)
				}
				checkL7(t, objs, tc.want, time.Since(start))
				checkCounters(t, objs, tc.counters)
				evs := readEvents(t, rd)
				if len(evs) != len(tc.names) {
					t.Fatalf("%d name events, want %d", len(evs), len(tc.names))
				}
				var nd nameDecoder
				for i, ev := range evs {
					names, err := nd.decode(ev, start)
					if err != nil {
						t.Fatalf("decode name event %d: %v", i, err)
					}
					if len(names) == 0 || names[0].Source.String() != tc.names[i] {
						t.Errorf("name event %d: %+v, want a %s name", i, names, tc.names[i])
					}
					cli, srv := l7Cli, l7Srv
					if tc.v6 {
						cli, srv = l7Cli6, l7Srv6
					}
					for _, n := range names {
						if n.Client.String() != cli || n.Seen != start {
							t.Errorf("name %+v: client %v seen %v, want %s %v", n, n.Client, n.Seen, cli, start)
						}
						if n.Source == model.NameTLS && (n.Name != "api.example.com" || n.Addr.String() != srv) {
							t.Errorf("tls name %+v, want api.example.com for %s", n, srv)
						}
						dnsName := "shop.example"
						if tc.dnsName != "" {
							dnsName = tc.dnsName
						}
						if n.Source == model.NameDNS && (n.Name != dnsName || n.Addr.String() == "192.0.2.66" || n.TTL != 300*time.Second) {
							t.Errorf("dns name %+v, want %s for 300s, not the forged 192.0.2.66", n, dnsName)
						}
					}
				}
			})
		}
	}

	// The L7 path follows the double buffer, as the flow maps do.
	t.Run("double buffer", func(t *testing.T) {
		resetL7(t, objs, rd)
		if err := objs.ActiveBuf.Set(uint32(1)); err != nil {
			t.Fatalf("set active_buf: %v", err)
		}
		h := testHooks(t, objs)[0]
		h.run(t, req(get))
		if v, ok := readL7(t, objs, true)[up]; !ok || v.Methods[model.MethodGET] != 1 {
			t.Errorf("half b: %s GET requests = %d (entry %v), want 1", keyString(up), v.Methods[model.MethodGET], ok)
		}
		if got := readL7(t, objs, false); len(got) != 0 {
			t.Errorf("half a has %d entries, want 0", len(got))
		}
	})

	// A latency bucket counts to 32,767 in its 16 bits, then moves
	// 32,768 into a wrap slot: every bucket at 32,767, a response wraps
	// its bucket and the histogram still counts every sample.
	t.Run("latency bucket wraps", func(t *testing.T) {
		resetL7(t, objs, rd)
		h := testHooks(t, objs)[0]
		k4, _ := up.v4()
		full := bpfL7Stats{Proto: uint8(bpfL7ProtoL7HTTP)}
		for i := range full.Latency {
			full.Latency[i] = 0x7fff_7fff_7fff_7fff
		}
		if err := objs.L7s4A.Put(&k4, &full); err != nil {
			t.Fatalf("seed %s: %v", keyString(up), err)
		}
		h.run(t, req(get))
		h.run(t, resp(ok200))
		var s bpfL7Stats
		if err := objs.L7s4A.Lookup(&k4, &s); err != nil {
			t.Fatalf("look up %s: %v", keyString(up), err)
		}
		b := int(s.LatencyWraps[0]>>56) - 1
		if b < 0 || s.LatencyWraps[0]&0xff != 1 || s.LatencyWraps[1] != 0 {
			t.Fatalf("wrap slots %x, want one wrap of one bucket", s.LatencyWraps)
		}
		var l model.L7
		addL7Stats(&l, &s)
		if n, want := l.Latency.Count(), uint64(model.LatencyBuckets*32767+1); n != want {
			t.Errorf("%d latencies, want %d", n, want)
		}
		if n := l.Latency.Counts[b]; n != 32768 {
			t.Errorf("bucket %d counts %d, want 32,768", b, n)
		}
		if f := s.Latency[b/4] >> (16 * (b % 4)) & 0xffff; f != 0 {
			t.Errorf("bucket %d's 16 bits hold %#x, want 0 (its guard cleared)", b, f)
		}
	})

	// A request waits in its flow's entry; its response after a flip
	// finds it there while the drain has not taken the entry, and in the
	// pending map, where the drain carries it, once it has.
	for _, drained := range []bool{false, true} {
		t.Run(fmt.Sprintf("request across a flip, drained %t", drained), func(t *testing.T) {
			resetL7(t, objs, rd)
			h := testHooks(t, objs)[0]
			h.run(t, req(get))
			h.run(t, req(get)) // pipelined
			if err := objs.ActiveBuf.Set(uint32(1)); err != nil {
				t.Fatalf("set active_buf: %v", err)
			}
			if drained {
				d := &drainer{
					l7s:       [2]half{{objs.L7s4A, objs.L7s6A}, {objs.L7s4B, objs.L7s6B}},
					l7pending: half{objs.L7Pending4, objs.L7Pending6},
					l7:        map[bpfFlowKey]*pendingL7{},
					l7keys4:   make([]bpfFlowKey4, l7Batch),
					l7keys6:   make([]bpfFlowKey, l7Batch),
					l7vals:    make([]bpfL7Stats, l7Batch),
				}
				if err := d.drainL7(0); err != nil {
					t.Fatalf("drain half a: %v", err)
				}
				if l := d.l7[up]; l == nil || l.Methods[model.MethodGET] != 2 {
					t.Fatalf("drained %+v for %s, want 2 GET requests", l, keyString(up))
				}
			}
			h.run(t, resp(ok200))
			h.run(t, resp(ok200))
			h.run(t, resp(ok200)) // answers no request waiting
			v := readL7(t, objs, true)[up]
			if n := v.Latency.Count(); n != 2 || v.Unmatched != 1 || v.Statuses[2] != 3 {
				t.Errorf("half b: %d latencies, %d unmatched, %d 2xx; want 2, 1, 3", n, v.Unmatched, v.Statuses[2])
			}
			var k bpfL7PendingKey4
			var w bpfL7Pending
			if err := objs.L7Pending4.NextKey(nil, &k); !errors.Is(err, ebpf.ErrKeyNotExist) {
				_ = objs.L7Pending4.Lookup(&k, &w)
				t.Errorf("pending map holds %+v: %+v after its requests' responses, want nothing", k, w)
			}
		})
	}
}

// TestBPFL7MapFull checks that a full L7 map refuses a new flow's
// messages and counts them, by reason and protocol (those that only tell
// their protocol too), while the flows it holds go on counting, on IPv4
// and IPv6.
func TestBPFL7MapFull(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	const maxFlows = 2
	objs := loadTestObjects(t, maxFlows)
	const get = "GET / HTTP/1.1\r\nHost: shop\r\n\r\n"
	for _, v6 := range []bool{false, true} {
		cli, srv := l7Cli, l7Srv
		if v6 {
			cli, srv = l7Cli6, l7Srv6
		}
		t.Run(fmt.Sprintf("v6=%v", v6), func(t *testing.T) {
			resetObjects(t, objs)
			h := testHooks(t, objs)[0]
			// maxFlows connections fill the map; one more is refused,
			// twice; the first connection's next request still counts.
			for port := range uint16(maxFlows + 1) {
				h.run(t, tcpPayload(t, v6, cli, srv, 42000+port, 80, []byte(get)))
			}
			h.run(t, tcpPayload(t, v6, cli, srv, 42000+maxFlows, 80, []byte(get)))
			h.run(t, tcpPayload(t, v6, cli, srv, 42000, 80, []byte(get)))
			// Payloads that only tell their protocol are lost too, and
			// counted under it.
			h.run(t, tcpPayload(t, v6, cli, srv, 43000, 6379, []byte("*1\r\n$4\r\nPING\r\n")))
			h.run(t, tcpPayload(t, v6, cli, srv, 43001, 5432, []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}))
			got := readL7(t, objs, false)
			if len(got) != maxFlows {
				t.Errorf("L7 map holds %d flows, want %d", len(got), maxFlows)
			}
			first := flowKey(cli, srv, 42000, 80, layers.IPProtocolTCP, 0)
			if n := got[first].Methods[model.MethodGET]; n != 2 {
				t.Errorf("%s: GET requests = %d, want 2", keyString(first), n)
			}
			if _, ok := got[flowKey(cli, srv, 42000+maxFlows, 80, layers.IPProtocolTCP, 0)]; ok {
				t.Errorf("the flow past the map's size has an entry")
			}
			checkL7Lost(t, objs, map[l7LossKey]uint64{
				{bpfL7LossL7LOSS_MAP_FULL, model.L7HTTP}:     2,
				{bpfL7LossL7LOSS_MAP_FULL, model.L7Redis}:    1,
				{bpfL7LossL7LOSS_MAP_FULL, model.L7Postgres}: 1,
			})
		})
	}
}

// TestBPFL7IPv6Extensions checks that an HTTP request behind eight IPv6
// extension headers is counted as HTTP: the L7 path starts where parse
// found the TCP header (before, past three, it was not looked at).
func TestBPFL7IPv6Extensions(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	objs := loadTestObjects(t, 0)
	for _, h := range testHooks(t, objs) {
		t.Run(h.name, func(t *testing.T) {
			resetObjects(t, objs)
			f := buildFrame(t, ethL(layers.EthernetTypeIPv6), ip6L(l7Cli6, l7Srv6, layers.IPProtocolIPv6Destination),
				ipv6DstOpts(8, layers.IPProtocolTCP), tcpL(42000, 80, hdrPSH|hdrACK),
				gopacket.Payload("GET / HTTP/1.1\r\nHost: shop\r\n\r\n"))
			h.run(t, f)
			k := flowKey(l7Cli6, l7Srv6, 42000, 80, layers.IPProtocolTCP, 0)
			if n := readL7(t, objs, false)[k].Methods[model.MethodGET]; n != 1 {
				t.Errorf("%s: GET requests = %d, want 1", keyString(k), n)
			}
		})
	}
}

// TestBPFL7Burst checks that a burst of new flows, each with one HTTP
// request, from more goroutines than CPUs, gets an L7 entry for every
// flow, far below the map's size. With per-CPU values not preallocated, a
// third of them failed with -ENOMEM (the kernel's atomic per-CPU pool
// ran dry), counted as "map full".
func TestBPFL7Burst(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	const flows = 20000
	objs := loadTestObjects(t, 65536)
	resetObjects(t, objs)
	h := testHooks(t, objs)[0]
	const get = "GET / HTTP/1.1\r\nHost: shop\r\n\r\n"
	frames := make([][]byte, flows)
	for i := range frames {
		srv := fmt.Sprintf("198.51.%d.%d", 100+i/250, 1+i%250)
		frames[i] = tcpPayload(t, false, l7Cli, srv, uint16(40000+i%1000), 80, []byte(get))
	}
	const workers = 4
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			for i := w; i < len(frames); i += workers {
				if _, err := h.prog.Run(&ebpf.RunOptions{Data: frames[i]}); err != nil {
					errs <- fmt.Errorf("run %s: %w", h.name, err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	got := readL7(t, objs, false)
	if len(got) != flows {
		t.Errorf("L7 map holds %d flows, want %d", len(got), flows)
	}
	for k, l := range got {
		if l.Methods[model.MethodGET] != 1 {
			t.Errorf("%s: GET requests = %d, want 1", keyString(k), l.Methods[model.MethodGET])
			break
		}
	}
	checkL7Lost(t, objs, nil)
}

// l7LossKey indexes the l7_lost map: a reason and a protocol.
type l7LossKey struct {
	reason bpfL7Loss
	proto  model.L7Protocol
}

// sumL7Lost returns the l7_lost map's counts summed over the CPUs, the
// zeros left out.
func sumL7Lost(t testing.TB, objs *bpfObjects) map[l7LossKey]uint64 {
	t.Helper()
	got := map[l7LossKey]uint64{}
	for reason := range bpfL7LossL7LOSS_MAX {
		for proto := range model.L7Protocol(l7Protos) {
			var percpu []uint64
			if err := objs.L7Lost.Lookup(uint32(reason)*l7Protos+uint32(proto), &percpu); err != nil {
				t.Fatalf("read l7_lost[%d][%d]: %v", reason, proto, err)
			}
			for _, v := range percpu {
				if v != 0 {
					got[l7LossKey{reason, proto}] += v
				}
			}
		}
	}
	return got
}

// checkL7Lost fails t unless the l7_lost map counts what want says, and
// nothing else.
func checkL7Lost(t testing.TB, objs *bpfObjects, want map[l7LossKey]uint64) {
	t.Helper()
	got := sumL7Lost(t, objs)
	for k, n := range want {
		if got[k] != n {
			t.Errorf("L7 messages lost (%s, %s) = %d, want %d", l7LossNames[k.reason], k.proto, got[k], n)
		}
	}
	for k, n := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("L7 messages lost (%s, %s) = %d, want 0", l7LossNames[k.reason], k.proto, n)
		}
	}
}

// l7BenchFrames are frames on and off the L7 path, for BenchmarkBPFL7.
func l7BenchFrames(b *testing.B) []struct {
	name  string
	frame []byte
} {
	return []struct {
		name  string
		frame []byte
	}{
		{"udp_64B_not_dns", buildFrame(b, ethL(layers.EthernetTypeIPv4), ip4L(l7Cli, l7Srv, layers.IPProtocolUDP),
			udpL(40000, 5001), payloadL(64-14-20-8))},
		{"tcp_ack", buildFrame(b, ethL(layers.EthernetTypeIPv4), ip4L(l7Cli, l7Srv, layers.IPProtocolTCP), tcpL(42000, 5001, hdrACK))},
		{"tcp_1400B_bulk", tcpPayload(b, false, l7Cli, l7Srv, 42000, 5001, bytes.Repeat([]byte{0xa5}, 1400))},
		{"http_request", tcpPayload(b, false, l7Cli, l7Srv, 42000, 80, []byte("GET /index.html HTTP/1.1\r\nHost: shop\r\n\r\n"))},
		{"http_response", tcpPayload(b, false, l7Srv, l7Cli, 80, 42000, []byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))},
		{"dns_query", udpPayload(b, l7Cli, l7Srv, 41000, 53, dnsMsg(b, 1, false, 0, "shop.example"))},
		{"dns_nxdomain", udpPayload(b, l7Srv, l7Cli, 53, 41000, dnsMsg(b, 1, true, layers.DNSResponseCodeNXDomain, "shop.example"))},
	}
}

// BenchmarkBPFL7 times tc_ingress on frames off the L7 path (a UDP frame
// not to the DNS port, a pure ACK, bulk TCP data that no parser knows) and
// on it: an HTTP request (its time noted), an HTTP response (matched to a
// request only while requests wait; then unmatched, which costs the same
// lookups), a DNS query and a DNS NXDOMAIN response (no name event). Each
// frame's flow has its entries, as in BenchmarkBPFProgram.
func BenchmarkBPFL7(b *testing.B) {
	testenv.MustBeRoot(b)
	testenv.MustHaveBTF(b)
	const benchRepeat = 10000
	objs := loadTestObjects(b, 0)
	for _, bc := range l7BenchFrames(b) {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			var total time.Duration
			var calls int
			for b.Loop() {
				_, perRun, err := objs.TcIngress.Benchmark(bc.frame, benchRepeat, nil)
				if err != nil {
					b.Fatalf("benchmark %s: %v", bc.name, err)
				}
				total += perRun
				calls++
			}
			b.ReportMetric(float64(total.Nanoseconds())/float64(calls), "ns/op")
		})
	}
}
