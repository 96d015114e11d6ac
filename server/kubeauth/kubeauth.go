// Package kubeauth authenticates the agent's HTTP clients by their
// Kubernetes bearer tokens and authorizes them by the cluster's RBAC, as
// the kubelet and kube-rbac-proxy do: a TokenReview says who holds a token,
// a SubjectAccessReview whether they may read. Both answers are cached a
// little while, in bounded LRUs, so that a scrape every 15 seconds does not
// cost two API calls each.
//
// What a caller must be allowed (see Attributes):
//
//   - /metrics: get on the non-resource URL /metrics, which the usual
//     Prometheus ClusterRoles grant already;
//   - every other path (/api/v1/flows, /api/v1/graph, /api/v1/nodegraph/…,
//     and /healthz, /readyz with a token): get on the virtual subresource
//     nodes/flowmap, named after the agent's node. No API server serves
//     nodes/flowmap: granting it grants nothing else, unlike nodes/proxy.
//
// It is a package of its own so that package server builds without
// client-go; the agent's main plugs it in.
package kubeauth

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/singleflight"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/flowmap/flowmap/server"
)

// The resource a reader of the agent's API must be allowed to get: the
// subresource flowmap of the agent's node.
const (
	Resource    = "nodes"
	Subresource = "flowmap"
	// MetricsPath is authorized as a non-resource URL instead.
	MetricsPath = "/metrics"
)

// Config are the settings of a Reviewer.
type Config struct {
	// Node is the name of the agent's node: the name of the nodes/flowmap
	// resource asked for.
	Node string
	// CacheSize bounds each cache, of tokens and of decisions (0: 1024).
	CacheSize int
	// How long answers are kept (0: the kubelet's defaults, 2m for a
	// token reviewed, 5m for an access allowed, 30s for either refused).
	TokenTTL, AllowTTL, DenyTTL time.Duration
}

// Reviewer is a server.Authenticator and server.Authorizer that asks the
// Kubernetes API server.
type Reviewer struct {
	client kubernetes.Interface
	cfg    Config
	now    func() time.Time

	tokens    *lru.Cache[[sha256.Size]byte, tokenAnswer]
	decisions *lru.Cache[string, decision]
	flight    singleflight.Group // one review at a time per key
}

type tokenAnswer struct {
	user    server.User
	ok      bool
	reason  string
	expires time.Time
}

type decision struct {
	allowed bool
	reason  string
	expires time.Time
}

// NewForConfig returns a Reviewer that asks the API server of rc. The
// ServiceAccount behind rc needs create on tokenreviews and
// subjectaccessreviews (the ClusterRole system:auth-delegator).
func NewForConfig(rc *rest.Config, c Config) (*Reviewer, error) {
	// In JSON rather than client-go's default protobuf: the reviews are
	// small and, cached, rare, and JSON is what every API server and proxy
	// in front of one speaks.
	rc = rest.CopyConfig(rc)
	rc.ContentType = "application/json"
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("make kubernetes client: %w", err)
	}
	return New(client, c), nil
}

// New returns a Reviewer that asks through client.
func New(client kubernetes.Interface, c Config) *Reviewer {
	if c.CacheSize <= 0 {
		c.CacheSize = 1024
	}
	c.TokenTTL = cmp.Or(c.TokenTTL, 2*time.Minute)
	c.AllowTTL = cmp.Or(c.AllowTTL, 5*time.Minute)
	c.DenyTTL = cmp.Or(c.DenyTTL, 30*time.Second)
	tokens, _ := lru.New[[sha256.Size]byte, tokenAnswer](c.CacheSize) // fails only on a size ≤ 0
	decisions, _ := lru.New[string, decision](c.CacheSize)
	return &Reviewer{client: client, cfg: c, now: time.Now, tokens: tokens, decisions: decisions}
}

// Authenticate asks a TokenReview who holds token. Tokens are kept by
// their hash, never as they are. Returns server.ErrUnauthenticated for a
// token the API server does not accept.
func (r *Reviewer) Authenticate(ctx context.Context, token string) (server.User, error) {
	key := sha256.Sum256([]byte(token))
	a, ok := r.tokens.Get(key)
	if !ok || !r.now().Before(a.expires) {
		v, err, _ := r.flight.Do("token:"+string(key[:]), func() (any, error) {
			tr, err := r.client.AuthenticationV1().TokenReviews().Create(ctx,
				&authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token}}, metav1.CreateOptions{})
			if err != nil {
				return nil, fmt.Errorf("review token: %w", err)
			}
			a := tokenAnswer{ok: tr.Status.Authenticated, reason: tr.Status.Error}
			ttl := r.cfg.DenyTTL
			if a.ok {
				u := tr.Status.User
				a.user = server.User{Name: u.Username, UID: u.UID, Groups: u.Groups}
				if len(u.Extra) > 0 {
					a.user.Extra = make(map[string][]string, len(u.Extra))
					for k, v := range u.Extra {
						a.user.Extra[k] = v
					}
				}
				ttl = r.cfg.TokenTTL
			}
			a.expires = r.now().Add(ttl)
			r.tokens.Add(key, a)
			return a, nil
		})
		if err != nil {
			return server.User{}, err
		}
		a = v.(tokenAnswer)
	}
	if !a.ok {
		if a.reason != "" {
			return server.User{}, fmt.Errorf("%w: %s", server.ErrUnauthenticated, a.reason)
		}
		return server.User{}, server.ErrUnauthenticated
	}
	return a.user, nil
}

// Attributes are what a SubjectAccessReview asks for a request of a:
// non-resource attributes for /metrics, the resource attributes of
// nodes/flowmap of the node for any other path.
func (r *Reviewer) Attributes(a server.Attributes) (*authzv1.ResourceAttributes, *authzv1.NonResourceAttributes) {
	if a.Path == MetricsPath {
		return nil, &authzv1.NonResourceAttributes{Path: a.Path, Verb: a.Verb}
	}
	return &authzv1.ResourceAttributes{Verb: a.Verb, Version: "v1", Resource: Resource, Subresource: Subresource, Name: r.cfg.Node}, nil
}

// Authorize asks a SubjectAccessReview whether user may do what a asks.
func (r *Reviewer) Authorize(ctx context.Context, user server.User, a server.Attributes) (bool, string, error) {
	res, nonRes := r.Attributes(a)
	spec := authzv1.SubjectAccessReviewSpec{
		ResourceAttributes: res, NonResourceAttributes: nonRes,
		User: user.Name, UID: user.UID, Groups: user.Groups,
	}
	for k, v := range user.Extra {
		if spec.Extra == nil {
			spec.Extra = map[string]authzv1.ExtraValue{}
		}
		spec.Extra[k] = v
	}
	raw, err := json.Marshal(spec) // every field that may change the answer
	if err != nil {
		return false, "", fmt.Errorf("review access: %w", err)
	}
	key := string(raw)
	d, ok := r.decisions.Get(key)
	if !ok || !r.now().Before(d.expires) {
		v, err, _ := r.flight.Do("access:"+key, func() (any, error) {
			sar, err := r.client.AuthorizationV1().SubjectAccessReviews().Create(ctx,
				&authzv1.SubjectAccessReview{Spec: spec}, metav1.CreateOptions{})
			if err != nil {
				return nil, fmt.Errorf("review access: %w", err)
			}
			d := decision{allowed: sar.Status.Allowed && !sar.Status.Denied, reason: sar.Status.Reason}
			ttl := r.cfg.AllowTTL
			if !d.allowed {
				ttl = r.cfg.DenyTTL
				if d.reason == "" {
					d.reason = "no RBAC rule allows it"
				}
				if res != nil {
					d.reason += fmt.Sprintf(`; reading the agent's API needs %q on %s/%s`, res.Verb, Resource, Subresource)
				} else {
					d.reason += fmt.Sprintf("; reading %s needs %q on the non-resource URL %s", nonRes.Path, nonRes.Verb, nonRes.Path)
				}
			}
			d.expires = r.now().Add(ttl)
			r.decisions.Add(key, d)
			return d, nil
		})
		if err != nil {
			return false, "", err
		}
		d = v.(decision)
	}
	return d.allowed, d.reason, nil
}
