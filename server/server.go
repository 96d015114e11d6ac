// Package server serves the agent's HTTP API: the flows of the last
// intervals as JSON on /api/v1/flows, /healthz, /readyz, and /metrics.
//
// It serves beyond this machine only over TLS and to authenticated,
// authorized callers (see Config); on a loopback address it answers only
// requests that name a loopback host, against DNS rebinding. It imports no
// Kubernetes client: an Authenticator and Authorizer that ask the API server
// are plugged in from outside (package kubeauth).
package server

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/netutil"

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
	dpath  func() any // the datapath's warnings, for /readyz

	mu       sync.Mutex
	batches  []model.Batch // oldest first, at most keep
	sizes    []uint64      // each batch's estimated bytes (batchBytes)
	bytes    uint64        // their sum, at most maxBytes
	maxBytes uint64
	dropped  uint64 // records let go of for maxBytes
}

// DefaultHistoryBytes bounds the batches a Server keeps, in bytes (see
// SetMaxBytes): 24 MiB, about 71,000 records without L7 or health.
const DefaultHistoryBytes = 24 << 20

// Sizes of what a kept batch holds, as Go lays it out. An L7 (1,040 B) is
// allocated in the 1,152 B size class; a Health's drops map costs its
// header and a bucket of 8 entries at least.
const (
	recordBytes = uint64(unsafe.Sizeof(model.Record{}))
	l7Bytes     = 1152
	healthBytes = uint64(unsafe.Sizeof(model.Health{})) + 48
	dropBytes   = 48 // a drop reason's map slot and its share of a bucket
	nameBytes   = uint64(unsafe.Sizeof(model.Name{}))
)

// recordExtra is what r points to beyond its own struct.
func recordExtra(r *model.Record) uint64 {
	var n uint64
	if r.L7 != nil {
		n += l7Bytes
	}
	if r.Health != nil {
		n += healthBytes + uint64(len(r.Health.Drops))*dropBytes
	}
	return n
}

// batchBytes estimates the memory that b holds: its records' array (to
// its capacity), what they point to, and its names.
func batchBytes(b *model.Batch) uint64 {
	n := uint64(cap(b.Records))*recordBytes + uint64(cap(b.Names))*nameBytes
	for i := range b.Records {
		n += recordExtra(&b.Records[i])
	}
	for i := range b.Names {
		n += uint64(len(b.Names[i].Name))
	}
	return n
}

type route struct {
	pattern string
	h       http.Handler
}

// New returns a server that keeps the last keep batches. ready tells
// /readyz whether the agent is ready (nil) or why not.
func New(keep int, ready func() error, g prometheus.Gatherer, log *slog.Logger) *Server {
	return &Server{keep: max(keep, 1), ready: ready, gatherer: g, log: log, maxBytes: DefaultHistoryBytes}
}

// SetMaxBytes bounds the memory of the batches kept to n bytes (0:
// DefaultHistoryBytes): past it, the oldest batches go first, and a batch
// that alone is larger keeps its first records that fit. Records let go
// of are counted (Usage).
func (s *Server) SetMaxBytes(n uint64) {
	if n == 0 {
		n = DefaultHistoryBytes
	}
	s.mu.Lock()
	s.maxBytes = n
	s.mu.Unlock()
}

// Add keeps a batch, dropping the oldest past keep or the byte bound.
func (s *Server) Add(b model.Batch) {
	size := batchBytes(&b)
	s.mu.Lock()
	defer s.mu.Unlock()
	if size > s.maxBytes {
		b, size = s.truncate(b)
	}
	s.batches = append(s.batches, b)
	s.sizes = append(s.sizes, size)
	s.bytes += size
	for len(s.batches) > s.keep || (s.bytes > s.maxBytes && len(s.batches) > 1) {
		if len(s.batches) <= s.keep {
			// Past keep, the oldest goes as asked; past the bound, it
			// is counted.
			s.dropped += uint64(len(s.batches[0].Records))
		}
		s.bytes -= s.sizes[0]
		s.batches[0] = model.Batch{}
		s.batches, s.sizes = s.batches[1:], s.sizes[1:]
	}
}

// truncate returns b cut to the records that fit in maxBytes, in a new
// array of their size (b's own, larger, would stay held), and its size.
// It counts the records cut.
func (s *Server) truncate(b model.Batch) (model.Batch, uint64) {
	size := uint64(cap(b.Names)) * nameBytes
	n := 0
	for n < len(b.Records) {
		add := recordBytes + recordExtra(&b.Records[n])
		if size+add > s.maxBytes {
			break
		}
		size += add
		n++
	}
	s.dropped += uint64(len(b.Records) - n)
	b.Records = slices.Clone(b.Records[:n])
	return b, batchBytes(&b)
}

// Usage is the memory of the batches kept: entries are records.
func (s *Server) Usage() model.StoreUsage {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n uint64
	for i := range s.batches {
		n += uint64(len(s.batches[i].Records))
	}
	return model.StoreUsage{Entries: n, Bytes: s.bytes, LimitBytes: s.maxBytes, Dropped: s.dropped}
}

// Flows returns the last n batches merged. The merge runs outside the
// lock, on a copy of the batches' list, so that Add does not wait for it:
// the batches themselves are not changed once added, and Merge clones what
// it adds into.
func (s *Server) Flows(n int) FlowsDoc {
	s.mu.Lock()
	bs := slices.Clone(s.batches[max(len(s.batches)-n, 0):])
	s.mu.Unlock()
	m := model.Merge(bs...)
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

// ReportDatapath adds what status returns, unless nil, to /readyz's
// answer, as "datapath": the hooks where another program may hide packets
// from flowmap. Call it before Handler or Serve.
func (s *Server) ReportDatapath(status func() any) { s.dpath = status }

// Readiness is /readyz's answer.
type Readiness struct {
	Ready bool `json:"ready"`
	// Reason says why not, when not.
	Reason  string `json:"reason,omitempty"`
	Sources any    `json:"sources,omitempty"`
	// Datapath warns of what the datapath may not see (see
	// ReportDatapath); it does not make the agent unready.
	Datapath any `json:"datapath,omitempty"`
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
// before; the body says why not, and how the inventory's sources are, to
// callers with credentials where the server asks for them (the kubelet's
// probes, without, see the status alone).
func (s *Server) serveReady(w http.ResponseWriter, req *http.Request) {
	r := Readiness{Ready: true}
	if err := s.ready(); err != nil {
		r = Readiness{Reason: err.Error()}
	}
	if s.status != nil {
		r.Sources = s.status()
	}
	if s.dpath != nil {
		r.Datapath = s.dpath()
	}
	if anonymous(req) {
		r = Readiness{Ready: r.Ready}
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
	bw := bufio.NewWriterSize(w, 32<<10)
	err := writeFlows(bw, s.Flows(min(n, s.keep)))
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		s.log.Debug("write flows", "err", err)
	}
}

// writeFlows writes doc as json.Encoder would, one record at a time: the
// flows of 12 intervals of a busy node run to hundreds of megabytes, which
// Encoder would build whole before writing the first byte.
func writeFlows(w *bufio.Writer, doc FlowsDoc) error {
	head, err := json.Marshal(struct {
		Version   int       `json:"version"`
		Start     time.Time `json:"start"`
		End       time.Time `json:"end"`
		Intervals int       `json:"intervals"`
	}{doc.Version, doc.Start, doc.End, doc.Intervals})
	if err != nil {
		return err
	}
	w.Write(head[:len(head)-1]) // without its }
	w.WriteString(`,"flows":`)
	if doc.Flows == nil {
		w.WriteString("null")
	} else {
		w.WriteByte('[')
		for i := range doc.Flows {
			if i > 0 {
				w.WriteByte(',')
			}
			b, err := json.Marshal(&doc.Flows[i])
			if err != nil {
				return fmt.Errorf("encode flow %d: %w", i, err)
			}
			if _, err := w.Write(b); err != nil {
				return err
			}
		}
		w.WriteByte(']')
	}
	_, err = w.WriteString("}\n")
	return err
}

// Config is how the server serves: TLS, authentication, and its limits.
// The zero Config serves plain HTTP to anyone, which ServeListener allows on
// a loopback address only.
type Config struct {
	// TLSCert and TLSKey are PEM files of the server's certificate and key,
	// read again when they change; both or neither.
	TLSCert, TLSKey string
	// Authenticator tells who holds a request's bearer token; nil: nobody is
	// asked for one.
	Authenticator Authenticator
	// Authorizer tells what the authenticated may read; nil: everything.
	Authorizer Authorizer
	// MaxConns caps the connections served at once (0: DefaultMaxConns);
	// past it, new ones wait in the listen backlog.
	MaxConns int
	// ReadTimeout, WriteTimeout and IdleTimeout are http.Server's; 0 takes
	// the defaults below.
	ReadTimeout, WriteTimeout, IdleTimeout time.Duration
}

// The defaults of Config's limits. A write may take the render of a large
// graph; an idle connection holds one of MaxConns.
const (
	DefaultMaxConns     = 64
	DefaultReadTimeout  = 10 * time.Second
	DefaultWriteTimeout = 60 * time.Second
	DefaultIdleTimeout  = 90 * time.Second
)

// ErrInsecure is what ServeListener and Check return for a listener beyond
// loopback without TLS or authentication.
var ErrInsecure = errors.New("serving beyond loopback needs TLS and authentication")

// Check tells whether the server may serve on addr (host:port) with c:
// beyond loopback only with TLS and an Authenticator.
func (c Config) Check(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("tls: want both a certificate and a key, or neither")
	}
	if IsLoopback(host) {
		return nil
	}
	var missing []string
	if c.TLSCert == "" {
		missing = append(missing, "no TLS certificate and key")
	}
	if c.Authenticator == nil {
		missing = append(missing, "no authentication")
	}
	if missing != nil {
		return fmt.Errorf("listen on %s, not a loopback address: %w (%s)", addr, ErrInsecure, strings.Join(missing, ", "))
	}
	return nil
}

// Serve listens on addr and serves as c says until ctx is done. It fails
// at once where Check does.
func (s *Server) Serve(ctx context.Context, addr string, c Config) error {
	if err := c.Check(addr); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	return s.ServeListener(ctx, ln, c)
}

// ServeListener serves on ln as c says until ctx is done, and closes ln.
// It fails at once where c.Check(ln's address) does.
func (s *Server) ServeListener(ctx context.Context, ln net.Listener, c Config) error {
	addr := ln.Addr().String()
	if err := c.Check(addr); err != nil {
		ln.Close()
		return err
	}
	host, _, _ := net.SplitHostPort(addr)
	h := &guard{next: s.Handler(), loopback: IsLoopback(host), authn: c.Authenticator, authz: c.Authorizer, log: s.log}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       cmp.Or(c.ReadTimeout, DefaultReadTimeout),
		WriteTimeout:      cmp.Or(c.WriteTimeout, DefaultWriteTimeout),
		IdleTimeout:       cmp.Or(c.IdleTimeout, DefaultIdleTimeout),
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	if c.TLSCert != "" {
		certs, err := newCertFiles(c.TLSCert, c.TLSKey, s.log)
		if err != nil {
			ln.Close()
			return err
		}
		srv.TLSConfig = &tls.Config{GetCertificate: certs.GetCertificate, MinVersion: tls.VersionTLS12}
	}
	ln = netutil.LimitListener(ln, cmp.Or(c.MaxConns, DefaultMaxConns))
	s.log.Info("listening", "addr", addr, "tls", c.TLSCert != "", "auth", c.Authenticator != nil)
	errc := make(chan error, 1)
	go func() {
		if srv.TLSConfig != nil {
			errc <- srv.ServeTLS(ln, "", "")
		} else {
			errc <- srv.Serve(ln)
		}
	}()
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
