package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
)

// certs is a CA and a server certificate it signed, in files.
type certs struct {
	pool      *x509.CertPool
	cert, key string // the server's files
	caKey     *ecdsa.PrivateKey
	ca        *x509.Certificate
}

// newCerts makes a CA and writes a server certificate for ips to dir.
func newCerts(t *testing.T, dir string, ips ...netip.Addr) *certs {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "flowmap test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	c := &certs{pool: x509.NewCertPool(), cert: filepath.Join(dir, "tls.crt"), key: filepath.Join(dir, "tls.key"), caKey: caKey, ca: ca}
	c.pool.AddCert(ca)
	c.issue(t, "flowmap 1", ips...)
	return c
}

// issue writes a new server certificate named cn over the files.
func (c *certs) issue(t *testing.T, cn string, ips ...netip.Addr) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip.AsSlice())
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.ca, &key.PublicKey, c.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write(t, c.cert, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	write(t, c.key, string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})))
}

// write writes s to path and moves its modification time on by a second
// from the last, so that a rewrite shows even within the file system's
// timestamp granularity.
func write(t *testing.T, path, s string) {
	t.Helper()
	next := time.Now()
	if fi, err := os.Stat(path); err == nil {
		next = fi.ModTime().Add(time.Second)
	}
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, next, next); err != nil {
		t.Fatal(err)
	}
}

// serve serves s on ln with c until the test ends.
func serve(t *testing.T, s *Server, ln net.Listener, c Config) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ServeListener(ctx, ln, c) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
}

// denyMetrics lets every user read but /metrics.
type denyMetrics struct{}

func (denyMetrics) Authorize(_ context.Context, u User, a Attributes) (bool, string, error) {
	if a.Path == "/metrics" {
		return false, "no RBAC rule lets " + u.Name + " get /metrics", nil
	}
	return a.Verb == "get", "", nil
}

func newTestServer() *Server {
	s := New(2, func() error { return errors.New("not attached: secret detail") }, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	s.ReportStatus(func() any { return []string{"netns"} })
	s.Add(batch(time.Date(2026, 11, 25, 9, 0, 0, 0, time.UTC), 100))
	return s
}

// TestAuth plays clients of an agent that listens on this machine's
// non-loopback address, as on a node's: without a token (401), with a
// wrong one (401), with the file's (200), with the file's where the
// authorizer says no (403). The kubelet's probes, without a token, get
// /healthz and /readyz's status but not its reasons.
func TestAuth(t *testing.T) {
	dir := t.TempDir()
	addr := testenv.HostAddr(t)
	c := newCerts(t, dir, addr)
	tokens := filepath.Join(dir, "token")
	write(t, tokens, "s3cret-token\n")
	tf, err := NewTokenFile(tokens)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	serve(t, newTestServer(), ln, Config{TLSCert: c.cert, TLSKey: c.key, Authenticator: tf, Authorizer: denyMetrics{}})
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.pool}}}
	base := "https://" + ln.Addr().String()

	get := func(t *testing.T, path, token string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	for _, tc := range []struct {
		name, path, token string
		code              int
		body, notBody     string
	}{
		{"no token", "/api/v1/flows", "", 401, "want an Authorization: Bearer token", `"flows"`},
		{"wrong token", "/api/v1/flows", "s3cret-tokeN", 401, "not accepted", `"flows"`},
		{"token prefix", "/api/v1/flows", "s3cret", 401, "not accepted", `"flows"`},
		{"token", "/api/v1/flows", "s3cret-token", 200, `"flows":[{`, ""},
		{"denied", "/metrics", "s3cret-token", 403, `forbidden: user "token-file" may not get /metrics: no RBAC rule`, "go_"},
		{"metrics without token", "/metrics", "", 401, "unauthorized", "go_"},
		{"healthz without token", "/healthz", "", 200, "ok", ""},
		{"readyz without token", "/readyz", "", 503, `{"ready":false}`, "secret detail"},
		{"readyz with token", "/readyz", "s3cret-token", 503, "not attached: secret detail", ""},
		{"readyz with wrong token", "/readyz", "nope", 401, "not accepted", "secret detail"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := get(t, tc.path, tc.token)
			if code != tc.code || !strings.Contains(body, tc.body) || (tc.notBody != "" && strings.Contains(body, tc.notBody)) {
				t.Errorf("GET %s: %d %q; want %d with %q and without %q", tc.path, code, body, tc.code, tc.body, tc.notBody)
			}
		})
	}

	t.Run("token file rotated", func(t *testing.T) {
		write(t, tokens, "a-new-token-of-another-length\n")
		if code, body := get(t, "/api/v1/flows", "s3cret-token"); code != 401 {
			t.Errorf("the old token after rotation: %d %q, want 401", code, body)
		}
		if code, body := get(t, "/api/v1/flows", "a-new-token-of-another-length"); code != 200 {
			t.Errorf("the new token after rotation: %d %q, want 200", code, body)
		}
	})

	t.Run("certificate renewed", func(t *testing.T) {
		c.issue(t, "flowmap 2", addr)
		conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: c.pool})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if cn := conn.ConnectionState().PeerCertificates[0].Subject.CommonName; cn != "flowmap 2" {
			t.Errorf("certificate after renewal: %q, want %q", cn, "flowmap 2")
		}
	})
}

// TestRefuseInsecure checks that the server will not serve beyond
// loopback without TLS and authentication, and says what is missing.
func TestRefuseInsecure(t *testing.T) {
	dir := t.TempDir()
	addr := testenv.HostAddr(t)
	c := newCerts(t, dir, addr)
	tf := &TokenFile{}
	host := netip.AddrPortFrom(addr, 0).String()
	for _, tc := range []struct {
		name, addr string
		cfg        Config
		err        string // "" for none
	}{
		{"plain", host, Config{}, "no TLS certificate and key, no authentication"},
		{"tls only", host, Config{TLSCert: c.cert, TLSKey: c.key}, "(no authentication)"},
		{"auth only", host, Config{Authenticator: tf}, "(no TLS certificate and key)"},
		{"every address", "0.0.0.0:9477", Config{}, "not a loopback address"},
		{"every address, v6", "[::]:9477", Config{}, "not a loopback address"},
		{"cert without key", "127.0.0.1:9477", Config{TLSCert: c.cert}, "want both"},
		{"both", host, Config{TLSCert: c.cert, TLSKey: c.key, Authenticator: tf}, ""},
		{"loopback", "127.0.0.2:9477", Config{}, ""},
		{"loopback v6", "[::1]:9477", Config{}, ""},
		{"localhost", "localhost:9477", Config{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Check(tc.addr)
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("Check(%s) = %v, want an error with %q", tc.addr, err, tc.err)
			}
		})
	}
	// And ServeListener itself, on a listener of the host's address.
	ln, err := net.Listen("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	// Cancelled: were it to serve, it would return at once.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = newTestServer().ServeListener(ctx, ln, Config{})
	if !errors.Is(err, ErrInsecure) {
		t.Errorf("ServeListener on %s without TLS or auth = %v, want ErrInsecure", ln.Addr(), err)
	}
}

// TestHostHeader plays DNS rebinding against a server on loopback: a page
// of evil.example whose name now resolves to 127.0.0.1 makes the browser
// send "Host: evil.example". Such requests are refused; loopback names
// and addresses, with any port, are served.
func TestHostHeader(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.2:0") // loopback, not the usual 127.0.0.1
	if err != nil {
		t.Fatal(err)
	}
	serve(t, newTestServer(), ln, Config{})
	for _, tc := range []struct {
		host string
		code int
	}{
		{"evil.example", 421},
		{"evil.example:9477", 421},
		{"127.0.0.1.nip.io", 421},
		{"localhost.evil.example", 421},
		{"192.0.2.1:9477", 421},
		{"[fd00::1]:9477", 421},
		{"localhost", 200},
		{"LOCALHOST:9477", 200},
		{"localhost.:80", 200},
		{"127.0.0.1:9477", 200},
		{"127.0.0.2", 200},
		{"127.255.0.9:1", 200},
		{"[::1]:9477", 200},
		{"[::1]", 200},
	} {
		t.Run(tc.host, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, "http://"+ln.Addr().String()+"/api/v1/flows", nil)
			req.Host = tc.host
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.code {
				t.Errorf("Host %q: %d %q, want %d", tc.host, resp.StatusCode, body, tc.code)
			}
			if tc.code == 421 && !strings.Contains(string(body), "not a loopback name or address") {
				t.Errorf("Host %q: body %q, want it to say why", tc.host, body)
			}
		})
	}
}

// TestFlowsStreamed checks that /api/v1/flows, written a record at a time,
// is byte for byte what json.Encoder writes of the whole document.
func TestFlowsStreamed(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 9, 0, 0, 0, time.UTC)
	for _, n := range []int{0, 1, 3} {
		doc := FlowsDoc{Version: FlowsVersion, Start: t0, End: t0.Add(time.Second), Intervals: 1, Flows: []model.Record{}}
		for i := range n {
			doc.Flows = append(doc.Flows, batch(t0, uint64(i)).Records...)
		}
		var want bytes.Buffer
		json.NewEncoder(&want).Encode(doc)
		var got bytes.Buffer
		bw := bufio.NewWriter(&got)
		if err := writeFlows(bw, doc); err != nil {
			t.Fatal(err)
		}
		bw.Flush()
		if got.String() != want.String() {
			t.Errorf("%d flows:\n%s\nwant json.Encoder's:\n%s", n, got.String(), want.String())
		}
	}
}
