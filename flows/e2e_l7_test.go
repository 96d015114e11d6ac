package flows_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowmap/flowmap/flows"
	"github.com/flowmap/flowmap/internal/sandboxtest"
	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/sandbox"
)

// serverDelay is how long the HTTP server waits before each response, so
// that the kernel's latency (request to response at the host's veth) and
// the client's (request written to response read) differ by a small share.
// 23 ms is in the middle of the histogram's bucket [20.97 ms, 25.17 ms):
// the p50 interpolated in it is then close to the samples whatever the
// jitter.
const serverDelay = 23 * time.Millisecond

// TestEndToEndL7 runs real HTTP and DNS servers and clients in a sandbox
// and checks what the L7 parsers counted: every HTTP request by method and
// response by status class on one keep-alive connection, with a latency
// p50 within 20% of the client's; every DNS query by response code, and
// the names the answers gave, every answer matched to its query; and of
// ClientHellos, the first of a connection's client only.
func TestEndToEndL7(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	testenv.MustHaveCommand(t, "dnsmasq")
	if err := sandbox.Cleanup("fml"); err != nil {
		t.Fatalf("remove leftovers: %v", err)
	}
	sb := sandboxtest.New(t, sandbox.Options{Prefix: "fml", Subnet: e2eSubnet})
	a := mustHost(t, sb, "a")
	b := mustHost(t, sb, "b")
	d := mustHost(t, sb, "d")
	c := runDatapath(t, flows.Config{Interfaces: []string{"fml-*"}})

	httpPort := startHTTPServer(t, b)
	var clientLat []time.Duration
	client := &http.Client{Transport: &http.Transport{DialContext: a.DialContext, MaxConnsPerHost: 1}}
	reqs := []struct {
		method, path string
		n            int
	}{
		{http.MethodGet, "/status/200", 20},
		{http.MethodPost, "/status/404", 7},
		{http.MethodDelete, "/status/500", 5},
	}
	for _, r := range reqs {
		for range r.n {
			clientLat = append(clientLat, do(t, client, r.method, fmt.Sprintf("http://%s:%d%s", b.Addr, httpPort, r.path)))
		}
	}
	client.CloseIdleConnections()

	dnsServer := sandboxtest.StartDNSMasq(t, d, map[string]netip.Addr{
		"api.shop.example": netip.MustParseAddr("198.51.100.77"), "db.shop.example": netip.MustParseAddr("198.51.100.78")})
	lookups := []struct {
		name string
		want netip.Addr // zero: NXDOMAIN
	}{
		{"api.shop.example", netip.MustParseAddr("198.51.100.77")},
		{"db.shop.example", netip.MustParseAddr("198.51.100.78")},
		{"API.shop.example", netip.MustParseAddr("198.51.100.77")},
		{"nope.shop.example", netip.Addr{}},
		{"gone.shop.example", netip.Addr{}},
		{"api.shop.example", netip.MustParseAddr("198.51.100.77")},
		{"missing.shop.example", netip.Addr{}},
	}
	res := a.Resolver(dnsServer)
	var found, nx uint64
	for _, l := range lookups {
		got, err := res.LookupNetIP(context.Background(), "ip4", l.name+".")
		var dnsErr *net.DNSError
		switch {
		case !l.want.IsValid() && errors.As(err, &dnsErr) && dnsErr.IsNotFound:
			nx++
		case l.want.IsValid() && err == nil && slices.Equal(got, []netip.Addr{l.want}):
			found++
		default:
			t.Fatalf("look up %s = %v, %v; want %v", l.name, got, err, l.want)
		}
	}

	sendClientHellos(t, a, b)

	recs := c.flows(t)

	t.Run("http", func(t *testing.T) {
		rs := find(recs, a.Addr, b.Addr, model.ProtoTCP, httpPort)
		r := one(t, rs)
		if r.Src != a.Addr || r.Dst != b.Addr {
			t.Fatalf("flow %s → %s, want %s → %s", r.Src, r.Dst, a.Addr, b.Addr)
		}
		l := r.L7
		if l == nil {
			t.Fatalf("flow %s → %s:%d has no L7", r.Src, r.Dst, r.DstPort)
		}
		if l.Protocol != model.L7HTTP {
			t.Errorf("protocol = %s, want http", l.Protocol)
		}
		var wantMethods [model.NumMethods]uint64
		wantMethods[model.MethodGET], wantMethods[model.MethodPOST], wantMethods[model.MethodDELETE] = 20, 7, 5
		if l.Methods != wantMethods {
			t.Errorf("methods = %v, want %v", l.Methods, wantMethods)
		}
		if want := [6]uint64{2: 20, 4: 7, 5: 5}; l.Statuses != want {
			t.Errorf("statuses = %v, want %v", l.Statuses, want)
		}
		if l.Unmatched != 0 || l.Latency.Count() != 32 {
			t.Errorf("latency samples = %d, unmatched = %d; want 32, 0", l.Latency.Count(), l.Unmatched)
		}
		got, want := l.Latency.Quantile(0.5), p50(clientLat)
		if d := (got - want).Abs(); d > want/5 {
			t.Errorf("latency p50 = %s, client's %s: differ by %s, more than 20%%", got, want, d)
		}
		t.Logf("latency p50 = %s, client's %s; p99 = %s", got, want, l.Latency.Quantile(0.99))
	})

	t.Run("dns", func(t *testing.T) {
		var sum model.L7
		var n int
		for _, r := range recs {
			if r.Proto != model.ProtoUDP || r.Src != a.Addr || r.Dst != d.Addr || r.DstPort != 53 {
				continue
			}
			if r.L7 == nil {
				t.Errorf("dns flow from port %d has no L7", r.SrcPort)
				continue
			}
			sum.Add(r.L7)
			n++
		}
		if n == 0 {
			t.Fatalf("no dns flow %s → %s:53 in %d records", a.Addr, d.Addr, len(recs))
		}
		if sum.Protocol != model.L7DNS {
			t.Errorf("protocol = %s, want dns", sum.Protocol)
		}
		if want := uint64(len(lookups)); sum.Queries != want {
			t.Errorf("queries = %d, want %d", sum.Queries, want)
		}
		want := [model.NumRcodes]uint64{0: found, 3: nx}
		if sum.Rcodes != want {
			t.Errorf("rcodes = %v, want %v (NOERROR %d, NXDOMAIN %d)", sum.Rcodes, want, found, nx)
		}
		if sum.Latency.Count() != uint64(len(lookups)) {
			t.Errorf("latency samples = %d, want %d", sum.Latency.Count(), len(lookups))
		}
	})

	t.Run("names", func(t *testing.T) {
		type key struct {
			addr   netip.Addr
			name   string
			client netip.Addr
		}
		got := map[key]int{}
		for _, nm := range c.names() {
			if nm.Source == model.NameTLS {
				continue // see "tls names"
			}
			if nm.Source != model.NameDNS || nm.TTL != sandboxtest.DNSTTL*time.Second || nm.Seen.IsZero() {
				t.Errorf("name %+v: want source dns, ttl %ds, a time seen", nm, sandboxtest.DNSTTL)
			}
			got[key{nm.Addr, nm.Name, nm.Client}]++
		}
		// The answers to the lookups that found an address, the name as
		// asked, lower case.
		want := map[key]int{
			{netip.MustParseAddr("198.51.100.77"), "api.shop.example", a.Addr}: 3,
			{netip.MustParseAddr("198.51.100.78"), "db.shop.example", a.Addr}:  1,
		}
		if !mapsEqual(got, want) {
			t.Errorf("names = %v, want %v", got, want)
		}
		if n := c.dp.Stats().NamesUnmatched; n != 0 {
			t.Errorf("%d DNS answers matched no query, want 0", n)
		}
	})

	t.Run("tls names", func(t *testing.T) {
		type key struct {
			addr   netip.Addr
			name   string
			client netip.Addr
		}
		got := map[key]int{}
		for _, nm := range c.names() {
			if nm.Source == model.NameTLS {
				got[key{nm.Addr, nm.Name, nm.Client}]++
			}
		}
		if want := map[key]int{{b.Addr, tlsServerName, a.Addr}: 1}; !mapsEqual(got, want) {
			t.Errorf("tls names = %v, want %v", got, want)
		}
		// The client's second ClientHello, and the server's.
		if n := c.dp.Stats().NamesNotClient; n != 2 {
			t.Errorf("ClientHellos refused = %d, want 2", n)
		}
	})
}

// tlsServerName is the server name of sendClientHellos' ClientHellos.
const tlsServerName = "api.shop.example"

// sendClientHellos connects a to a listener on b and sends on that one
// connection a ClientHello for tlsServerName from a, the same again, then
// one from b. Each side reads what the other sent whole before it writes,
// so that each ClientHello is a segment of its own.
func sendClientHellos(t *testing.T, a, b *sandbox.Host) {
	t.Helper()
	hello := clientHelloRecord(t, tlsServerName)
	ln, err := b.Listen("tcp4", b.Addr.String()+":0")
	if err != nil {
		t.Fatalf("listen in %s: %v", b.NetNS, err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		served <- func() error {
			c, err := ln.Accept()
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			buf := make([]byte, len(hello))
			if _, err := io.ReadFull(c, buf); err != nil {
				return fmt.Errorf("read the first ClientHello: %w", err)
			}
			if _, err := c.Write([]byte{'k'}); err != nil {
				return err
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				return fmt.Errorf("read the second ClientHello: %w", err)
			}
			_, err = c.Write(hello)
			return err
		}()
	}()
	conn, err := a.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial %s from %s: %v", ln.Addr(), a.NetNS, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, len(hello))
	if _, err := conn.Write(hello); err != nil {
		t.Fatalf("send ClientHello: %v", err)
	}
	if _, err := io.ReadFull(conn, buf[:1]); err != nil {
		t.Fatalf("read the server's ack: %v", err)
	}
	if _, err := conn.Write(hello); err != nil {
		t.Fatalf("send ClientHello again: %v", err)
	}
	if _, err := io.ReadFull(conn, buf); err != nil {
		t.Fatalf("read the server's ClientHello: %v", err)
	}
	if err := <-served; err != nil {
		t.Fatalf("serve: %v", err)
	}
}

// clientHelloRecord returns the first TLS record that crypto/tls sends to
// name: its ClientHello.
func clientHelloRecord(t *testing.T, name string) []byte {
	t.Helper()
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	go tls.Client(c, &tls.Config{ServerName: name}).Handshake()
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(s, hdr); err != nil {
		t.Fatalf("read client hello: %v", err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(s, body); err != nil {
		t.Fatalf("read client hello: %v", err)
	}
	return append(hdr, body...)
}

// names returns every name the batches so far carried.
func (c *collector) names() []model.Name {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []model.Name
	for _, b := range c.batches {
		out = append(out, b.Names...)
	}
	return out
}

func mapsEqual[K comparable](a, b map[K]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// startHTTPServer serves HTTP on h until the test ends: /status/N answers
// N after serverDelay. It returns the port, and fails the test if the
// server takes more than one connection: the client keeps one alive.
func startHTTPServer(t *testing.T, h *sandbox.Host) uint16 {
	t.Helper()
	ln, err := h.Listen("tcp4", h.Addr.String()+":0")
	if err != nil {
		t.Fatalf("listen in %s: %v", h.NetNS, err)
	}
	var conns atomic.Int32
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			var code int
			if _, err := fmt.Sscanf(r.URL.Path, "/status/%d", &code); err != nil {
				code = http.StatusBadRequest
			}
			time.Sleep(serverDelay)
			w.WriteHeader(code)
			fmt.Fprintf(w, "%d\n", code)
		}),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				conns.Add(1)
			}
		},
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve http: %v", err)
		}
		if n := conns.Load(); n != 1 {
			t.Errorf("http server took %d connections, want 1 kept alive", n)
		}
	})
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// do sends one request and returns how long the response took to come,
// from sending to the last byte of its body.
func do(t *testing.T, c *http.Client, method, url string) time.Duration {
	t.Helper()
	var body io.Reader
	if method == http.MethodPost {
		body = strings.NewReader("item=42")
	}
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	took := time.Since(start)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("read %s %s: %v", method, url, err)
	}
	return took
}

// p50 returns the median of d, as the histogram's quantile ranks it: the
// sample at rank n/2.
func p50(d []time.Duration) time.Duration {
	s := slices.Sorted(slices.Values(d))
	return s[(len(s)-1)/2]
}
