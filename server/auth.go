package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"
)

// ErrUnauthenticated is what an Authenticator returns for a token it does
// not know: the request is answered 401. Any other error is answered 500.
var ErrUnauthenticated = errors.New("unauthenticated")

// User is who sent a request, as an Authenticator tells it.
type User struct {
	Name   string
	UID    string
	Groups []string
	Extra  map[string][]string
}

// Attributes are what a request asks to do: Verb is "get" for GET and
// HEAD, the method in lower case otherwise; Path is the URL's path.
type Attributes struct {
	Verb string
	Path string
}

// Authenticator tells who holds a bearer token. Returns ErrUnauthenticated
// (wrapped or not) for a token it does not accept.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (User, error)
}

// Authorizer tells whether user may do what a request asks; reason says
// why not, for the 403's body.
type Authorizer interface {
	Authorize(ctx context.Context, user User, a Attributes) (allowed bool, reason string, err error)
}

// TokenFile authenticates requests whose bearer token is one of the lines
// of a file. The file is read again when its modification time or size
// changes, so a rotated Secret takes effect without a restart.
type TokenFile struct {
	path string

	mu     sync.Mutex
	mtime  time.Time
	size   int64
	hashes [][sha256.Size]byte // of each token
}

// NewTokenFile reads the tokens of path: each line that is not empty is
// one. It fails if the file cannot be read or holds no token.
func NewTokenFile(path string) (*TokenFile, error) {
	f := &TokenFile{path: path}
	if err := f.reload(); err != nil {
		return nil, err
	}
	return f, nil
}

// reload reads the file again if it changed. The caller holds f.mu, or is
// NewTokenFile.
func (f *TokenFile) reload() error {
	fi, err := os.Stat(f.path)
	if err != nil {
		return fmt.Errorf("read token file: %w", err)
	}
	if fi.ModTime().Equal(f.mtime) && fi.Size() == f.size && f.hashes != nil {
		return nil
	}
	raw, err := os.ReadFile(f.path)
	if err != nil {
		return fmt.Errorf("read token file: %w", err)
	}
	var hashes [][sha256.Size]byte
	for _, line := range bytes.Split(raw, []byte("\n")) {
		if line = bytes.TrimSpace(line); len(line) > 0 {
			hashes = append(hashes, sha256.Sum256(line))
		}
	}
	if len(hashes) == 0 {
		return fmt.Errorf("read token file %s: no token in it", f.path)
	}
	f.mtime, f.size, f.hashes = fi.ModTime(), fi.Size(), hashes
	return nil
}

// Authenticate accepts token if it is one of the file's. It compares in
// constant time, on hashes so that the tokens' lengths do not show either.
// A file that became unreadable keeps its last tokens.
func (f *TokenFile) Authenticate(_ context.Context, token string) (User, error) {
	f.mu.Lock()
	err := f.reload()
	hashes := f.hashes
	f.mu.Unlock()
	h := sha256.Sum256([]byte(token))
	ok := 0
	for i := range hashes {
		ok |= subtle.ConstantTimeCompare(h[:], hashes[i][:])
	}
	if ok == 1 {
		return User{Name: "token-file"}, nil
	}
	if err != nil {
		return User{}, fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	}
	return User{}, ErrUnauthenticated
}

// IsLoopback tells whether host, a name or an address as in --listen, is
// only reachable from this machine: localhost, 127.0.0.0/8 or ::1. The
// empty host and 0.0.0.0 (every address) are not.
func IsLoopback(host string) bool {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
	return err == nil && a.Unmap().IsLoopback()
}

// ctxKey keys the context values the guard sets.
type ctxKey int

const anonymousKey ctxKey = iota

// anonymous tells whether the request came without credentials to a path
// that takes them (/healthz, /readyz): the answer then holds no detail.
func anonymous(r *http.Request) bool { return r.Context().Value(anonymousKey) != nil }

// public are the paths the kubelet's probes reach without a token. /readyz
// answers them with its status alone.
var public = map[string]bool{"/healthz": true, "/readyz": true}

// guard checks each request before next serves it: on a loopback listener
// the Host header (against DNS rebinding), then the bearer token and what
// its user may do.
type guard struct {
	next     http.Handler
	loopback bool
	authn    Authenticator
	authz    Authorizer // nil: every authenticated user may read
	log      *slog.Logger
}

func (g *guard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if g.loopback && !loopbackHost(r.Host) {
		// A browser on this machine sends the name it resolved: a page of
		// evil.example whose name later resolves to 127.0.0.1 sends that.
		http.Error(w, fmt.Sprintf("misdirected request: host %q is not a loopback name or address; this server answers localhost, 127.0.0.0/8 and [::1] only", r.Host),
			http.StatusMisdirectedRequest)
		return
	}
	if g.authn == nil {
		g.next.ServeHTTP(w, r)
		return
	}
	token, ok := bearer(r)
	if !ok && public[r.URL.Path] {
		g.next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), anonymousKey, true)))
		return
	}
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="flowmap"`)
		http.Error(w, "unauthorized: want an Authorization: Bearer token", http.StatusUnauthorized)
		return
	}
	user, err := g.authn.Authenticate(r.Context(), token)
	if errors.Is(err, ErrUnauthenticated) {
		g.log.Debug("authenticate", "remote", r.RemoteAddr, "err", err)
		w.Header().Set("WWW-Authenticate", `Bearer realm="flowmap", error="invalid_token"`)
		http.Error(w, "unauthorized: the bearer token is not accepted", http.StatusUnauthorized)
		return
	}
	if err != nil {
		g.log.Warn("authenticate", "remote", r.RemoteAddr, "err", err)
		http.Error(w, "authentication failed: see the agent's log", http.StatusInternalServerError)
		return
	}
	if g.authz != nil {
		a := Attributes{Verb: verb(r.Method), Path: r.URL.Path}
		allowed, reason, err := g.authz.Authorize(r.Context(), user, a)
		if err != nil {
			g.log.Warn("authorize", "user", user.Name, "path", a.Path, "err", err)
			http.Error(w, "authorization failed: see the agent's log", http.StatusInternalServerError)
			return
		}
		if !allowed {
			msg := fmt.Sprintf("forbidden: user %q may not %s %s", user.Name, a.Verb, a.Path)
			if reason != "" {
				msg += ": " + reason
			}
			http.Error(w, msg, http.StatusForbidden)
			return
		}
	}
	g.next.ServeHTTP(w, r)
}

// bearer returns the request's bearer token.
func bearer(r *http.Request) (string, bool) {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

func verb(method string) string {
	if method == http.MethodGet || method == http.MethodHead {
		return "get"
	}
	return strings.ToLower(method)
}

// loopbackHost tells whether a Host header names this machine's loopback:
// localhost, an address of 127.0.0.0/8 or [::1], with any port or none.
func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	} else if strings.HasPrefix(hostport, "[") && strings.HasSuffix(hostport, "]") {
		host = hostport[1 : len(hostport)-1]
	}
	if strings.HasPrefix(host, "[") {
		return false // "[::1]" inside brackets twice, or unbalanced
	}
	return host != "" && IsLoopback(host)
}
