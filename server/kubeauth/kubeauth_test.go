package kubeauth

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	"k8s.io/client-go/rest"

	"github.com/flowmap/flowmap/server"
)

// apiServer answers TokenReviews and SubjectAccessReviews as the
// Kubernetes API server does, in its JSON, from a table of tokens and of
// what their users may get; it counts the reviews.
type apiServer struct {
	tokens map[string]authnv1.UserInfo
	// rules are what each user may get: "nodes/flowmap/<node>" or a
	// non-resource URL.
	rules map[string][]string

	mu      sync.Mutex
	reviews map[string]int // by kind
	specs   []authzv1.SubjectAccessReviewSpec
}

func (a *apiServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.reviews == nil {
		a.reviews = map[string]int{}
	}
	if r.Method != http.MethodPost {
		http.Error(w, "method", http.StatusMethodNotAllowed)
		return
	}
	// JSON only: what NewForConfig sends.
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		a.reviews["unsupported "+ct]++
		http.Error(w, "unsupported media type "+ct, http.StatusUnsupportedMediaType)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	switch r.URL.Path {
	case "/apis/authentication.k8s.io/v1/tokenreviews":
		var tr authnv1.TokenReview
		if err := json.NewDecoder(r.Body).Decode(&tr); err != nil || tr.Kind != "TokenReview" || tr.APIVersion != "authentication.k8s.io/v1" {
			http.Error(w, "bad TokenReview", http.StatusBadRequest)
			return
		}
		a.reviews["TokenReview"]++
		if u, ok := a.tokens[tr.Spec.Token]; ok {
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: u, Audiences: []string{"https://kubernetes.default.svc"}}
		} else {
			tr.Status = authnv1.TokenReviewStatus{Error: "invalid bearer token"}
		}
		json.NewEncoder(w).Encode(tr)
	case "/apis/authorization.k8s.io/v1/subjectaccessreviews":
		var sar authzv1.SubjectAccessReview
		if err := json.NewDecoder(r.Body).Decode(&sar); err != nil || sar.Kind != "SubjectAccessReview" {
			http.Error(w, "bad SubjectAccessReview", http.StatusBadRequest)
			return
		}
		a.reviews["SubjectAccessReview"]++
		a.specs = append(a.specs, sar.Spec)
		var what string
		if ra := sar.Spec.ResourceAttributes; ra != nil && ra.Verb == "get" && ra.Group == "" {
			what = ra.Resource + "/" + ra.Subresource + "/" + ra.Name
		} else if nr := sar.Spec.NonResourceAttributes; nr != nil && nr.Verb == "get" {
			what = nr.Path
		}
		for _, rule := range a.rules[sar.Spec.User] {
			if rule == what {
				sar.Status = authzv1.SubjectAccessReviewStatus{Allowed: true, Reason: `RBAC: allowed by ClusterRoleBinding "x"`}
			}
		}
		json.NewEncoder(w).Encode(sar)
	default:
		http.NotFound(w, r)
	}
}

func (a *apiServer) count(kind string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.reviews[kind]
}

const (
	prometheusSA = "system:serviceaccount:monitoring:prometheus"
	readerSA     = "system:serviceaccount:ops:flowmap-graph"
	strangerSA   = "system:serviceaccount:tenant-b:default"
)

// TestKubernetesAuth plays the cluster's callers against an agent whose
// reviews go to a fake API server through client-go: a pod without a token
// (401), with a forged one (401), a tenant's ServiceAccount without the
// RBAC (403), Prometheus (allowed /metrics only) and a reader with get on
// nodes/flowmap (200). A second scrape is answered from the caches.
func TestKubernetesAuth(t *testing.T) {
	api := &apiServer{
		tokens: map[string]authnv1.UserInfo{
			"prom-token":     {Username: prometheusSA, UID: "1", Groups: []string{"system:serviceaccounts"}},
			"reader-token":   {Username: readerSA, UID: "2", Groups: []string{"system:serviceaccounts"}, Extra: map[string]authnv1.ExtraValue{"authentication.kubernetes.io/pod-name": {"graph-1"}}},
			"stranger-token": {Username: strangerSA, UID: "3"},
		},
		rules: map[string][]string{
			prometheusSA: {"/metrics"},
			readerSA:     {"nodes/flowmap/node-1"},
			strangerSA:   {"nodes/flowmap/node-2"}, // another node's agent only
		},
	}
	kube := httptest.NewServer(api)
	defer kube.Close()
	rev, err := NewForConfig(&rest.Config{Host: kube.URL}, Config{Node: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	rev.now = func() time.Time { return now }

	s := server.New(1, func() error { return nil }, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	ln, err := net.Listen("tcp", "127.0.0.3:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ServeListener(ctx, ln, server.Config{Authenticator: rev, Authorizer: rev}) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	get := func(t *testing.T, path, token string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+ln.Addr().String()+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
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
		body              string
	}{
		{"no token", "/api/v1/flows", "", 401, "want an Authorization: Bearer token"},
		{"forged token", "/api/v1/flows", "forged", 401, "not accepted"},
		{"tenant without RBAC", "/api/v1/flows", "stranger-token", 403, `"get" on nodes/flowmap`},
		{"tenant, metrics", "/metrics", "stranger-token", 403, "on the non-resource URL /metrics"},
		{"prometheus, metrics", "/metrics", "prom-token", 200, ""},
		{"prometheus, flows", "/api/v1/flows", "prom-token", 403, `user "` + prometheusSA + `" may not get /api/v1/flows`},
		{"reader, flows", "/api/v1/flows", "reader-token", 200, `"flows":[]`},
		{"reader, readyz", "/readyz", "reader-token", 200, `"ready":true`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := get(t, tc.path, tc.token)
			if code != tc.code || !strings.Contains(body, tc.body) {
				t.Errorf("GET %s: %d %q; want %d with %q", tc.path, code, body, tc.code, tc.body)
			}
		})
	}

	t.Run("what is asked", func(t *testing.T) {
		api.mu.Lock()
		defer api.mu.Unlock()
		for _, s := range api.specs {
			if s.User != readerSA || s.ResourceAttributes == nil {
				continue
			}
			ra := *s.ResourceAttributes
			want := authzv1.ResourceAttributes{Verb: "get", Version: "v1", Resource: "nodes", Subresource: "flowmap", Name: "node-1"}
			if ra != want || s.UID != "2" || len(s.Groups) != 1 || s.Extra["authentication.kubernetes.io/pod-name"][0] != "graph-1" {
				t.Errorf("review of the reader: %+v, want %+v and its uid, groups and extra", s, want)
			}
		}
	})

	t.Run("cached", func(t *testing.T) {
		tr, sar := api.count("TokenReview"), api.count("SubjectAccessReview")
		for range 3 {
			if code, body := get(t, "/metrics", "prom-token"); code != 200 {
				t.Fatalf("scrape: %d %q", code, body)
			}
			if code, _ := get(t, "/api/v1/flows", "stranger-token"); code != 403 {
				t.Fatalf("tenant: %d, want 403", code)
			}
		}
		if got, gotSAR := api.count("TokenReview"), api.count("SubjectAccessReview"); got != tr || gotSAR != sar {
			t.Errorf("reviews after repeated requests: %d TokenReviews, %d SubjectAccessReviews; want %d and %d (cached)", got, gotSAR, tr, sar)
		}
		now = now.Add(31 * time.Second) // past the denials' 30s, within the rest
		get(t, "/metrics", "prom-token")
		get(t, "/api/v1/flows", "stranger-token")
		if got, gotSAR := api.count("TokenReview"), api.count("SubjectAccessReview"); got != tr || gotSAR != sar+1 {
			t.Errorf("reviews after 31s: %d TokenReviews, %d SubjectAccessReviews; want %d and %d (the denial asked again)", got, gotSAR, tr, sar+1)
		}
		now = now.Add(5 * time.Minute)
		get(t, "/metrics", "prom-token")
		if got := api.count("TokenReview"); got != tr+1 {
			t.Errorf("TokenReviews after 5m: %d, want %d", got, tr+1)
		}
	})
}
