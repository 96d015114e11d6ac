// Package server serves the agent's HTTP API: the flows of the last
// intervals as JSON on /api/v1/flows, /healthz, /readyz, and /metrics.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/flowmap/flowmap/model"
)

// FlowsVersion is the version of the /api/v1/flows document.
const FlowsVersion = 1

// FlowsDoc is the /api/v1/flows document: the flows of the last
// intervals, summed per flow.
type FlowsDoc struct {
	Version   int            `json:"version"`
	Start     time.Time      `json:"start"`
	End       time.Time      `json:"end"`
	Intervals int            `json:"intervals"`
	Flows     []model.Record `json:"flows"`
}

// Server keeps the last batches of flows and serves them.
type Server struct {
	keep     int
	ready    func() error
	gatherer prometheus.Gatherer
	log      *slog.Logger

	extra  []route    // mounted beside the server's own paths
	status func() any // the sources' status, for /readyz

	mu      sync.Mutex
	batches []model.Batch // oldest first, at most keep
}

type route struct {
	pattern string
	h       http.Handler
}

// New returns a server that keeps the last keep batches. ready tells
// /readyz whether the agent is ready (nil) or why not.
func New(keep int, ready func() error, g prometheus.Gatherer, log *slog.Logger) *Server {
	return &Server{keep: max(keep, 1), ready: ready, gatherer: g, log: log}
}

// Add keeps a batch, dropping the oldest past keep.
func (s *Server) Add(b model.Batch) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.batches = append(s.batches, b)
	if len(s.batches) > s.keep {
		s.batches = append(s.batches[:0], s.batches[len(s.batches)-s.keep:]...)
	}
}

// Flows returns the last n batches merged.
func (s *Server) Flows(n int) FlowsDoc {
	s.mu.Lock()
	bs := s.batches[max(len(s.batches)-n, 0):]
	m := model.Merge(bs...)
	s.mu.Unlock()
	if m.Records == nil {
		m.Records = []model.Record{}
	}
	return FlowsDoc{Version: FlowsVersion, Start: m.Start, End: m.End, Intervals: len(bs), Flows: m.Records}
}

// Handle mounts h on pattern (as http.ServeMux reads it) beside the
// server's own paths: the exports of later stages. Call it before Handler
// or Serve.
func (s *Server) Handle(pattern string, h http.Handler) {
	s.extra = append(s.extra, route{pattern, h})
}

// ReportStatus adds what status returns to /readyz's answer, as "sources":
// the inventory's sources, up or not. Call it before Handler or Serve.
func (s *Server) ReportStatus(status func() any) { s.status = status }

// Readiness is /readyz's answer.
type Readiness struct {
	Ready bool `json:"ready"`
	// Reason says why not, when not.
	Reason  string `json:"reason,omitempty"`
	Sources any    `json:"sources,omitempty"`
}

// Handler returns the HTTP handler of every endpoint.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	for _, r := range s.extra {
		mux.Handle(r.pattern, r.h)
	}
	mux.HandleFunc("GET /api/v1/flows", s.serveFlows)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", s.serveReady)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{}))
	return mux
}

// serveReady answers /readyz: 200 once the datapath is attached, 503
// before; the body says why not, and how the inventory's sources are.
func (s *Server) serveReady(w http.ResponseWriter, _ *http.Request) {
	r := Readiness{Ready: true}
	if err := s.ready(); err != nil {
		r = Readiness{Reason: err.Error()}
	}
	if s.status != nil {
		r.Sources = s.status()
	}
	w.Header().Set("Content-Type", "application/json")
	if !r.Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	if err := json.NewEncoder(w).Encode(r); err != nil {
		s.log.Debug("write readiness", "err", err)
	}
}

// serveFlows answers /api/v1/flows?last=N: the last N intervals (default
// 1, at most what the server keeps).
func (s *Server) serveFlows(w http.ResponseWriter, r *http.Request) {
	n := 1
	if v := r.URL.Query().Get("last"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			http.Error(w, fmt.Sprintf("last=%q: want a whole number of intervals, 1 or more", v), http.StatusBadRequest)
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(s.Flows(min(n, s.keep))); err != nil {
		s.log.Debug("write flows", "err", err)
	}
}

// Serve listens on addr and serves until ctx is done.
func (s *Server) Serve(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	s.log.Info("listening", "addr", ln.Addr().String())
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", addr, err)
	case <-ctx.Done():
	}
	shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shut); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("shut down %s: %w", addr, err)
	}
	return nil
}
