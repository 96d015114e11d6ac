package topology

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"
)

// Defaults of the HTTP API's level and window.
const (
	DefaultLevel  = LevelWorkload
	DefaultWindow = 5 * time.Minute
)

// Handler serves the graph's exports, each from one snapshot taken when
// the request comes; every path takes ?level= (default workload) and
// ?window= (1m, 5m (default), 15m, 1h):
//
//	GET /api/v1/graph?format=json|dot|svg|png|nodegraph  (default json)
//	GET /api/v1/graph/diff?since=10m|RFC3339[&factor=2]  what changed since (diff.go), as JSON
//	GET /api/v1/graph/diff?baseline=NAME[&factor=2]      what changed since a saved baseline (baseline.go)
//	POST, GET, DELETE /api/v1/graph/baseline             save a baseline, list them, forget one (baseline.go)
//	GET /api/v1/nodegraph/nodes, /api/v1/nodegraph/edges  the node graph frames, for the Infinity data source
//	GET /api/v1/nodegraph/api/health, …/api/graph/fields, …/api/graph/data  for the Node Graph API data source, with /api/v1/nodegraph as its base URL
//
// svg and png are rendered by Graphviz's dot command: 501 without it, and
// 503 (with Retry-After) while MaxRenders renders run already, as each
// starts a process. JSON is written as it is encoded, a node or edge at a
// time.
func Handler(g *Graph, log *slog.Logger) http.Handler {
	return newHandler(g, log).routes()
}

func newHandler(g *Graph, log *slog.Logger) *handler {
	return &handler{g: g, log: log, now: time.Now, render: Render, renders: make(chan struct{}, MaxRenders), baselines: &baselines{}}
}

// MaxRenders is how many svg or png renders by dot a Handler runs at once.
const MaxRenders = 2

// Source is where a handler takes its snapshots from: a Graph, or
// PromQL for the whole cluster.
type Source interface {
	Snapshot(ctx context.Context, end time.Time, level Level, window time.Duration) (*Snapshot, error)
}

// HandlerFor serves what Handler serves from src's snapshots.
func HandlerFor(src Source, log *slog.Logger) http.Handler {
	h := newHandler(nil, log)
	h.src = src
	return h.routes()
}

func (h *handler) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/graph", h.graph)
	mux.HandleFunc("GET /api/v1/graph/diff", h.diff)
	mux.HandleFunc("POST /api/v1/graph/baseline", h.saveBaseline)
	mux.HandleFunc("GET /api/v1/graph/baseline", h.listBaselines)
	mux.HandleFunc("DELETE /api/v1/graph/baseline", h.deleteBaseline)
	mux.HandleFunc("GET /api/v1/nodegraph/nodes", h.nodegraph(func(ng *NodeGraph) any { return ng.Nodes }))
	mux.HandleFunc("GET /api/v1/nodegraph/edges", h.nodegraph(func(ng *NodeGraph) any { return ng.Edges }))
	mux.HandleFunc("GET /api/v1/nodegraph/api/graph/data", h.nodegraph(func(ng *NodeGraph) any { return ng }))
	mux.HandleFunc("GET /api/v1/nodegraph/api/graph/fields", func(w http.ResponseWriter, r *http.Request) {
		h.write(w, "application/json", func(b io.Writer) error { return json.NewEncoder(b).Encode(Fields()) })
	})
	mux.HandleFunc("GET /api/v1/nodegraph/api/health", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	return mux
}

type handler struct {
	g *Graph
	// src, if not nil, is taken snapshots of instead of g.
	src Source
	log *slog.Logger
	now func() time.Time
	// render is Render; tests put a slow one.
	render func(ctx context.Context, w io.Writer, s *Snapshot, format string) error
	// renders holds a token per render running.
	renders chan struct{}
	// baselines are the snapshots saved for diffs (baseline.go).
	baselines *baselines
}

// params returns the request's level and window, or answers 400.
func (h *handler) params(w http.ResponseWriter, r *http.Request) (Level, time.Duration, bool) {
	level, window := DefaultLevel, DefaultWindow
	var err error
	if v := r.URL.Query().Get("level"); v != "" {
		if level, err = ParseLevel(v); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return "", 0, false
		}
	}
	if v := r.URL.Query().Get("window"); v != "" {
		if window, err = ParseWindow(v); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return "", 0, false
		}
	}
	return level, window, true
}

// take takes the snapshot at level over the window that ends at end, or
// answers 502 if the source fails.
func (h *handler) take(w http.ResponseWriter, r *http.Request, end time.Time, level Level, window time.Duration) (*Snapshot, bool) {
	if h.src == nil {
		return h.g.Snapshot(end, level, window), true
	}
	s, err := h.src.Snapshot(r.Context(), end, level, window)
	if err != nil {
		h.log.Debug("snapshot", "err", err)
		http.Error(w, err.Error(), http.StatusBadGateway)
		return nil, false
	}
	return s, true
}

// snapshot takes the snapshot the request's level and window ask for.
func (h *handler) snapshot(w http.ResponseWriter, r *http.Request) (*Snapshot, bool) {
	level, window, ok := h.params(w, r)
	if !ok {
		return nil, false
	}
	return h.take(w, r, h.now(), level, window)
}

// diff answers what changed between the request's window and the window of
// the same length that ends at since, or a saved baseline.
func (h *handler) diff(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	factor := float64(DefaultFactor)
	if v := q.Get("factor"); v != "" {
		var err error
		if factor, err = strconv.ParseFloat(v, 64); err != nil || factor <= 1 {
			http.Error(w, fmt.Sprintf("factor %q: want a number above 1", v), http.StatusBadRequest)
			return
		}
	}
	if q.Get("baseline") != "" {
		if q.Get("since") != "" {
			http.Error(w, "since and baseline: want one of them", http.StatusBadRequest)
			return
		}
		base, level, window, ok := h.savedBaseline(w, r)
		if !ok {
			return
		}
		s, ok := h.take(w, r, h.now(), level, window)
		if !ok {
			return
		}
		h.write(w, "application/json", func(b io.Writer) error { return WriteDiffJSON(b, Compare(base, s, factor)) })
		return
	}
	level, window, ok := h.params(w, r)
	if !ok {
		return
	}
	if q.Get("since") == "" {
		http.Error(w, "since: want a duration (10m) or an RFC 3339 time, or baseline: a saved baseline's name", http.StatusBadRequest)
		return
	}
	now := h.now()
	since, err := ParseSince(q.Get("since"), now)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if h.src == nil && since.Add(-window).Before(now.Add(-tiers[len(tiers)-1].until)) {
		http.Error(w, fmt.Sprintf("since %s: the baseline window would start more than the hour the graph keeps ago", q.Get("since")),
			http.StatusBadRequest)
		return
	}
	base, ok := h.take(w, r, since, level, window)
	if !ok {
		return
	}
	s, ok := h.take(w, r, now, level, window)
	if !ok {
		return
	}
	h.write(w, "application/json", func(b io.Writer) error { return WriteDiffJSON(b, Compare(base, s, factor)) })
}

func (h *handler) graph(w http.ResponseWriter, r *http.Request) {
	format := r.URL.Query().Get("format")
	types := map[string]string{
		"": "application/json", "json": "application/json", "nodegraph": "application/json",
		"dot": "text/vnd.graphviz; charset=utf-8", "svg": "image/svg+xml", "png": "image/png",
	}
	ctype, ok := types[format]
	if !ok {
		http.Error(w, fmt.Sprintf("format=%q: want json, dot, svg, png or nodegraph", format), http.StatusBadRequest)
		return
	}
	s, ok := h.snapshot(w, r)
	if !ok {
		return
	}
	if format == "svg" || format == "png" {
		select {
		case h.renders <- struct{}{}:
			defer func() { <-h.renders }()
		default:
			w.Header().Set("Retry-After", "1")
			http.Error(w, fmt.Sprintf("busy: %d renders by dot run already; retry, or ask for format=json or dot", cap(h.renders)),
				http.StatusServiceUnavailable)
			return
		}
	}
	h.write(w, ctype, func(b io.Writer) error {
		switch format {
		case "", "json":
			return WriteJSON(b, s)
		case "nodegraph":
			return WriteNodeGraph(b, s)
		}
		return h.render(r.Context(), b, s, format)
	})
}

func (h *handler) nodegraph(part func(*NodeGraph) any) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s, ok := h.snapshot(w, r)
		if !ok {
			return
		}
		h.write(w, "application/json", func(b io.Writer) error {
			ng := ToNodeGraph(s)
			j := newJSONStream(b, "")
			switch p := part(ng).(type) {
			case []NodeGraphNode:
				array(j, p, 0)
			case []NodeGraphEdge:
				array(j, p, 0)
			default:
				return writeNodeGraph(j, ng)
			}
			j.w.WriteByte('\n')
			if j.err != nil {
				return j.err
			}
			return j.w.Flush()
		})
	}
}

// write answers with what f writes as f writes it, through a buffer. If f
// fails before the buffer first fills, the answer is f's error; after, the
// status is sent already: the answer is cut short.
func (h *handler) write(w http.ResponseWriter, ctype string, f func(io.Writer) error) {
	cw := &countWriter{w: w}
	b := bufio.NewWriterSize(cw, 32<<10)
	w.Header().Set("Content-Type", ctype)
	err := f(b)
	if err == nil {
		err = b.Flush()
	}
	if err == nil {
		return
	}
	h.log.Debug("write graph", "err", err)
	if cw.n > 0 {
		return
	}
	code := http.StatusInternalServerError
	if errors.Is(err, ErrNoGraphviz) {
		code = http.StatusNotImplemented
	}
	http.Error(w, err.Error(), code)
}

// countWriter counts the bytes written through it.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
