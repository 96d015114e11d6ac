//go:build k8s

package k8sbox

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// agentServerName is the name the agents' one certificate carries, and
// clients check, as the README makes it.
const agentServerName = "flowmap.flowmap.svc"

// agentTLS makes the Secret flowmap-tls as the README does: a CA, made in
// Go here, and a certificate for flowmap.flowmap.svc, in the namespace
// flowmap, made first. It returns the CA's PEM.
func agentTLS(t *testing.T, ctx context.Context, c *Cluster) []byte {
	t.Helper()
	dir := t.TempDir()
	ca, err := newCA()
	if err != nil {
		t.Fatal(err)
	}
	if err := writePEM(filepath.Join(dir, "ca.crt"), "CERTIFICATE", ca.der); err != nil {
		t.Fatal(err)
	}
	if err := ca.issue(dir, "tls", agentServerName, nil, agentServerName); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"create", "namespace", "flowmap"},
		{"-n", "flowmap", "create", "secret", "generic", "flowmap-tls",
			"--from-file=" + filepath.Join(dir, "tls.crt"), "--from-file=" + filepath.Join(dir, "tls.key"), "--from-file=" + filepath.Join(dir, "ca.crt")},
	} {
		if out, err := c.Kubectl(ctx, args...); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	return caPEM
}

// agentAPI reads the node's agent over HTTPS, checking its certificate
// against the CA by agentServerName, with a bearer token.
type agentAPI struct {
	client *http.Client
	base   string
	token  string
}

func newAgentAPI(caPEM []byte, token string) *agentAPI {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &agentAPI{
		client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: agentServerName},
		}},
		base:  "https://" + NodeIP + ":9477",
		token: token,
	}
}

// get returns the status and body of path.
func (a *agentAPI) get(ctx context.Context, path string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.base+path, nil)
	if err != nil {
		return 0, nil, err
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// serviceAccountToken makes the ServiceAccount default/name, binds it to
// clusterRole unless that is empty, and returns a token of it.
func serviceAccountToken(t *testing.T, ctx context.Context, c *Cluster, name, clusterRole string) string {
	t.Helper()
	if out, err := c.Kubectl(ctx, "-n", "default", "create", "serviceaccount", name); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if clusterRole != "" {
		if out, err := c.Kubectl(ctx, "create", "clusterrolebinding", name, "--clusterrole="+clusterRole, "--serviceaccount=default:"+name); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	// Kubectl returns stderr too: run kubectl for the token alone.
	out, err := c.Kubectl(ctx, "-n", "default", "create", "token", name, "--duration=1h")
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	tok := strings.TrimSpace(out)
	if strings.ContainsAny(tok, " \n") {
		t.Fatalf("token of %s: %q is not a token", name, tok)
	}
	return tok
}

// checkAgentAuth checks the agent's API as a reader sees it, and as
// callers without a token or without the role do.
func checkAgentAuth(t *testing.T, ctx context.Context, caPEM []byte, reader, stranger string) {
	t.Helper()
	for _, tc := range []struct {
		name, token, path string
		want              int
	}{
		{"reader flows", reader, "/api/v1/flows", 200},
		{"reader graph", reader, "/api/v1/graph?level=workload", 200},
		{"reader metrics", reader, "/metrics", 403},
		{"no token", "", "/api/v1/flows", 401},
		{"bad token", "not-a-token", "/api/v1/flows", 401},
		{"no role", stranger, "/api/v1/flows", 403},
		{"probe", "", "/readyz", 200},
	} {
		code, body, err := newAgentAPI(caPEM, tc.token).get(ctx, tc.path)
		if err != nil {
			t.Errorf("%s: get %s: %v", tc.name, tc.path, err)
			continue
		}
		if code != tc.want {
			t.Errorf("%s: get %s: %d, want %d: %s", tc.name, tc.path, code, tc.want, body)
		}
	}
	// A client that does not trust the CA is refused at the handshake.
	a := newAgentAPI(nil, reader)
	if _, _, err := a.get(ctx, "/healthz"); err == nil || !strings.Contains(fmt.Sprint(err), "certificate") {
		t.Errorf("get without the CA: %v, want a certificate error", err)
	}
}
