package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flowmap/flowmap/enrich"
	"github.com/flowmap/flowmap/server"
	"github.com/flowmap/flowmap/server/kubeauth"
)

// hostPort is a listen address, host:port. A bare IPv6 address before the
// port is taken too, as "$(POD_IP):9477" gives on an IPv6 pod
// ("fd00::5:9477"): the port is always last, so the split is not
// ambiguous. It is kept as net.JoinHostPort writes it ("[fd00::5]:9477").
type hostPort string

func (h *hostPort) String() string { return string(*h) }

func (h *hostPort) Set(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		i := strings.LastIndexByte(s, ':')
		a, perr := netip.ParseAddr(s[:max(i, 0)])
		if i < 0 || perr != nil || !a.Is6() {
			return fmt.Errorf("parse listen address %q: want host:port, with an IPv6 host as [addr]:port or addr:port: %w", s, err)
		}
		host, port = s[:i], s[i+1:]
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("parse listen address %q: port %q: want a number from 0 to 65535", s, port)
	}
	*h = hostPort(net.JoinHostPort(host, port))
	return nil
}

// serveFlags are the settings of the HTTP API's security and limits.
type serveFlags struct {
	tlsCert, tlsKey string
	auth            string
	authTokenFile   string
	maxConns        int
}

func (f *serveFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.tlsCert, "tls-cert", "", "PEM certificate file to serve HTTPS with, re-read when it changes (needed when --listen is not loopback)")
	fs.StringVar(&f.tlsKey, "tls-key", "", "PEM key file of --tls-cert, re-read when it changes")
	fs.StringVar(&f.auth, "auth", "",
		"how callers authenticate, needed when --listen is not loopback: token (a bearer token of --auth-token-file) or kubernetes (a Kubernetes bearer token: TokenReview, then SubjectAccessReview for get on nodes/flowmap, or on the non-resource URL /metrics for /metrics; uses --kube-in-cluster or --kubeconfig)")
	fs.StringVar(&f.authTokenFile, "auth-token-file", "", "with --auth=token, a file of accepted bearer tokens, one a line, re-read when it changes")
	fs.IntVar(&f.maxConns, "max-conns", server.DefaultMaxConns, "connections the HTTP API serves at once; more wait")
}

// config returns the server's Config for listening on addr, or why the
// flags do not allow it: beyond loopback it takes TLS and --auth.
func (f *serveFlags) config(addr string, inv enrich.Config, node string) (server.Config, error) {
	c := server.Config{TLSCert: f.tlsCert, TLSKey: f.tlsKey, MaxConns: f.maxConns}
	switch f.auth {
	case "", "none":
	case "token":
		if f.authTokenFile == "" {
			return c, errors.New("agent: --auth=token needs --auth-token-file")
		}
		tf, err := server.NewTokenFile(f.authTokenFile)
		if err != nil {
			return c, fmt.Errorf("agent: --auth-token-file: %w", err)
		}
		c.Authenticator = tf
	case "kubernetes":
		var rc *rest.Config
		var err error
		switch {
		case inv.KubeInCluster:
			rc, err = rest.InClusterConfig()
		case inv.Kubeconfig != "":
			rc, err = clientcmd.BuildConfigFromFlags("", inv.Kubeconfig)
		default:
			return c, errors.New("agent: --auth=kubernetes needs --kube-in-cluster or --kubeconfig")
		}
		if err != nil {
			return c, fmt.Errorf("agent: --auth=kubernetes: load kubernetes config: %w", err)
		}
		rc.UserAgent = "flowmap"
		r, err := kubeauth.NewForConfig(rc, kubeauth.Config{Node: node})
		if err != nil {
			return c, fmt.Errorf("agent: --auth=kubernetes: %w", err)
		}
		c.Authenticator, c.Authorizer = r, r
	default:
		return c, fmt.Errorf("agent: --auth=%q: want token or kubernetes", f.auth)
	}
	if err := c.Check(addr); err != nil {
		if errors.Is(err, server.ErrInsecure) {
			return c, fmt.Errorf("agent: %w: give --tls-cert and --tls-key, and --auth=token or --auth=kubernetes, or listen on loopback", err)
		}
		return c, fmt.Errorf("agent: %w", err)
	}
	return c, nil
}

// clientFlags are how `flowmap graph` authenticates to an agent or to
// Prometheus, and checks its certificate.
type clientFlags struct {
	tokenFile, caFile, serverName string
}

func (f *clientFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.tokenFile, "token-file", "",
		"file of the bearer token to send to the agent or Prometheus (in a pod: /var/run/secrets/kubernetes.io/serviceaccount/token)")
	fs.StringVar(&f.caFile, "ca-file", "", "PEM file of the CA that signed the agent's or Prometheus' certificate (default: the system's)")
	fs.StringVar(&f.serverName, "tls-server-name", "",
		"name to check the server's certificate against, when it is not the URL's host (the DaemonSet's certificate names flowmap.flowmap.svc, not each node's address)")
}

// client returns an HTTP client that sends the token and trusts the CA.
func (f *clientFlags) client() (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{ServerName: f.serverName, MinVersion: tls.VersionTLS12}
	if f.caFile != "" {
		pem, err := os.ReadFile(f.caFile)
		if err != nil {
			return nil, fmt.Errorf("read --ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("read --ca-file %s: no PEM certificate in it", f.caFile)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	var rt http.RoundTripper = tr
	if f.tokenFile != "" {
		raw, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("read --token-file: %w", err)
		}
		token := strings.TrimSpace(string(raw))
		if token == "" {
			return nil, fmt.Errorf("read --token-file %s: it is empty", f.tokenFile)
		}
		rt = bearerTransport{token: token, next: tr}
	}
	return &http.Client{Transport: rt}, nil
}

// bearerTransport sends a bearer token with each request.
type bearerTransport struct {
	token string
	next  http.RoundTripper
}

func (b bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}
