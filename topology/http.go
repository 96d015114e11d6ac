package topology

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
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
//	GET /api/v1/nodegraph/nodes, /api/v1/nodegraph/edges  the node graph frames, for the Infinity data source
//	GET /api/v1/nodegraph/api/health, …/api/graph/fields, …/api/graph/data  for the Node Graph API data source, with /api/v1/nodegraph as its base URL
//
// svg and png are rendered by Graphviz's dot command: 501 without it.
func Handler(g *Graph, log *slog.Logger) http.Handler {
	h := &handler{g: g, log: log, now: time.Now}
	return h.routes()
}

func (h *handler) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/graph", h.graph)
	mux.HandleFunc("GET /api/v1/nodegraph/nodes", h.nodegraph(func(ng *NodeGraph) any { return ng.Nodes }))
	mux.HandleFunc("GET /api/v1/nodegraph/edges", h.nodegraph(func(ng *NodeGraph) any { return ng.Edges }))
	mux.HandleFunc("GET /api/v1/nodegraph/api/graph/data", h.nodegraph(func(ng *NodeGraph) any { return ng }))
	mux.HandleFunc("GET /api/v1/nodegraph/api/graph/fields", func(w http.ResponseWriter, r *http.Request) {
		h.write(w, "application/json", func(b *bytes.Buffer) error { return json.NewEncoder(b).Encode(Fields()) })
	})
	mux.HandleFunc("GET /api/v1/nodegraph/api/health", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	return mux
}

type handler struct {
	g   *Graph
	log *slog.Logger
	now func() time.Time
}

// snapshot takes the snapshot the request's level and window ask for.
func (h *handler) snapshot(w http.ResponseWriter, r *http.Request) (*Snapshot, bool) {
	level, window := DefaultLevel, DefaultWindow
	var err error
	if v := r.URL.Query().Get("level"); v != "" {
		if level, err = ParseLevel(v); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return nil, false
		}
	}
	if v := r.URL.Query().Get("window"); v != "" {
		if window, err = ParseWindow(v); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return nil, false
		}
	}
	return h.g.Snapshot(h.now(), level, window), true
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
	h.write(w, ctype, func(b *bytes.Buffer) error {
		switch format {
		case "", "json":
			return WriteJSON(b, s)
		case "nodegraph":
			return WriteNodeGraph(b, s)
		}
		return Render(r.Context(), b, s, format)
	})
}

func (h *handler) nodegraph(part func(*NodeGraph) any) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s, ok := h.snapshot(w, r)
		if !ok {
			return
		}
		h.write(w, "application/json", func(b *bytes.Buffer) error { return json.NewEncoder(b).Encode(part(ToNodeGraph(s))) })
	}
}

// write answers with what f writes, or with f's error.
func (h *handler) write(w http.ResponseWriter, ctype string, f func(*bytes.Buffer) error) {
	var b bytes.Buffer
	if err := f(&b); err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, ErrNoGraphviz) {
			code = http.StatusNotImplemented
		}
		h.log.Debug("write graph", "err", err)
		http.Error(w, err.Error(), code)
		return
	}
	w.Header().Set("Content-Type", ctype)
	w.Write(b.Bytes())
}
