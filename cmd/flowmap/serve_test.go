package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowmap/flowmap/internal/testenv"
)

func TestListenFlag(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{"127.0.0.1:9477", "127.0.0.1:9477", ""},
		{"[fd00::5]:9477", "[fd00::5]:9477", ""},
		// $(POD_IP):9477 on an IPv6 pod: "too many colons" before.
		{"fd00::5:9477", "[fd00::5]:9477", ""},
		{"2001:db8:1:2:3:4:5:6:9477", "[2001:db8:1:2:3:4:5:6]:9477", ""},
		{"fe80::1%eth0:9477", "[fe80::1%eth0]:9477", ""},
		{"::1:9477", "[::1]:9477", ""},
		{":9477", ":9477", ""},
		{"localhost:0", "localhost:0", ""},
		{"fd00::5", "", "want host:port"},
		{"127.0.0.1", "", "want host:port"},
		{"[fd00::5]:http", "", `port "http"`},
		{"10.0.0.1:70000", "", `port "70000"`},
	} {
		t.Run(tc.in, func(t *testing.T) {
			var h hostPort
			err := h.Set(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("Set(%q) = %v (%q), want an error with %q", tc.in, err, h, tc.err)
				}
				return
			}
			if err != nil || string(h) != tc.want {
				t.Errorf("Set(%q) = %v, %q; want %q", tc.in, err, h, tc.want)
			}
		})
	}
}

// TestAgentRefusesInsecure: on an address other hosts reach, the agent
// does not start without TLS and authentication, and says what to give.
// It fails before it loads anything, so no root is needed.
func TestAgentRefusesInsecure(t *testing.T) {
	host := testenv.HostAddr(t).String()
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	os.WriteFile(token, []byte("t0ken\n"), 0o600)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"plain", []string{"--listen=" + host + ":9477"}, "not a loopback address: serving beyond loopback needs TLS and authentication (no TLS certificate and key, no authentication): give --tls-cert and --tls-key, and --auth=token or --auth=kubernetes"},
		{"every address", []string{"--listen=:9477"}, "listen on :9477, not a loopback address"},
		{"token, no tls", []string{"--listen=0.0.0.0:9477", "--auth=token", "--auth-token-file=" + token}, "(no TLS certificate and key)"},
		{"token without file", []string{"--listen=127.0.0.1:9477", "--auth=token"}, "--auth=token needs --auth-token-file"},
		{"kubernetes without config", []string{"--listen=127.0.0.1:9477", "--auth=kubernetes"}, "--auth=kubernetes needs --kube-in-cluster or --kubeconfig"},
		{"unknown auth", []string{"--auth=basic"}, `--auth="basic": want token or kubernetes`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := run(t.Context(), append([]string{"agent", "--no-inventory"}, tc.args...), io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("agent %q = %v, want an error with %q", tc.args, err, tc.want)
			}
		})
	}
}

// writeCerts writes a CA (ca.crt) and a server certificate it signed for
// the name flowmap.flowmap.svc (tls.crt, tls.key) to dir, as the
// DaemonSet's Secret holds them.
func writeCerts(t *testing.T, dir string) {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	caKey, srvKey := key(), key()
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "flowmap CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ = x509.ParseCertificate(caDER)
	srv := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "flowmap.flowmap.svc"},
		DNSNames: []string{"flowmap.flowmap.svc"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	srvDER, err := x509.CreateCertificate(rand.Reader, srv, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(srvKey)
	for name, b := range map[string]*pem.Block{
		"ca.crt": {Type: "CERTIFICATE", Bytes: caDER}, "tls.crt": {Type: "CERTIFICATE", Bytes: srvDER},
		"tls.key": {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestAgentTLSAuth runs the agent as the DaemonSet does, on this machine's
// non-loopback address with TLS and a bearer token, and plays a client
// without the token (401), with it (200), and `flowmap graph` with
// --token-file and --ca-file (its graph) and without the token (401).
func TestAgentTLSAuth(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	bin := buildFlowmap(t)
	dir := t.TempDir()
	writeCerts(t, dir)
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", netip.AddrPortFrom(testenv.HostAddr(t), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin, "agent", "--listen="+addr, "--interval=200ms", "--interfaces=lo", "--no-inventory",
		"--tls-cert="+filepath.Join(dir, "tls.crt"), "--tls-key="+filepath.Join(dir, "tls.key"),
		"--auth=token", "--auth-token-file="+token)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })

	graph := func(args ...string) (string, error) {
		out, err := exec.Command(bin, append([]string{"graph", "--agent=https://" + addr, "--ca-file=" + filepath.Join(dir, "ca.crt"),
			"--tls-server-name=flowmap.flowmap.svc", "--format=json", "--timeout=5s"}, args...)...).CombinedOutput()
		return string(out), err
	}
	// Ready once `flowmap graph` gets an answer: the agent serves only
	// after it attached. Polled, as startAgent polls /readyz.
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, err := graph("--token-file=" + token)
		if err == nil {
			if !strings.Contains(out, `"version"`) {
				t.Errorf("graph with the token: %q, want the graph's JSON", out)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("graph with the token: %v: %s", err, out)
		}
		select {
		case err := <-done:
			t.Fatalf("agent exited: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	if out, err := graph(); err == nil || !strings.Contains(out, "401 Unauthorized") {
		t.Errorf("graph without the token: %v %q, want 401", err, out)
	}
	// Plain HTTP to the TLS port: an error, or the 400 Go's TLS server
	// writes to a plain HTTP request, never the flows.
	if resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + addr + "/api/v1/flows"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Errorf("plain HTTP: 200, want no answer over plain HTTP")
		}
	}
	client, err := (&clientFlags{caFile: filepath.Join(dir, "ca.crt"), serverName: "flowmap.flowmap.svc"}).client()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		token string
		code  int
	}{{"", 401}, {"wrong", 401}, {"s3cret", 200}} {
		req, _ := http.NewRequest(http.MethodGet, "https://"+addr+"/api/v1/flows", nil)
		if tc.token != "" {
			req.Header.Set("Authorization", "Bearer "+tc.token)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.code {
			t.Errorf("GET /api/v1/flows with token %q: %d, want %d", tc.token, resp.StatusCode, tc.code)
		}
	}
}

// agentCreds are what an agent needs to serve beyond loopback, as the
// DaemonSet's (a certificate naming flowmap.flowmap.svc, its CA) but with a
// token file for --auth, and a client that trusts and sends them.
type agentCreds struct {
	dir    string
	client *http.Client
}

func newAgentCreds(t *testing.T) *agentCreds {
	t.Helper()
	c := &agentCreds{dir: t.TempDir()}
	writeCerts(t, c.dir)
	if err := os.WriteFile(c.path("token"), []byte("cluster-test-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	client, err := (&clientFlags{tokenFile: c.path("token"), caFile: c.path("ca.crt"), serverName: "flowmap.flowmap.svc"}).client()
	if err != nil {
		t.Fatal(err)
	}
	client.Timeout = 10 * time.Second
	c.client = client
	return c
}

func (c *agentCreds) path(name string) string { return filepath.Join(c.dir, name) }

// args are the agent's flags of TLS and auth.
func (c *agentCreds) args() []string {
	return []string{"--tls-cert=" + c.path("tls.crt"), "--tls-key=" + c.path("tls.key"), "--auth=token", "--auth-token-file=" + c.path("token")}
}

// promConfig is a scrape job's settings that reach such agents.
func (c *agentCreds) promConfig() string {
	return fmt.Sprintf(`scheme: https
    authorization: {credentials_file: %q}
    tls_config: {ca_file: %q, server_name: flowmap.flowmap.svc}`, c.path("token"), c.path("ca.crt"))
}

// waitReady waits until the agent on addr (host:port) answers /readyz.
func (c *agentCreds) waitReady(t *testing.T, addr string, d time.Duration) {
	t.Helper()
	u := "https://" + addr + "/readyz"
	eventually(t, d, u+" answers 200", func() (bool, string) {
		resp, err := c.client.Get(u)
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
}
