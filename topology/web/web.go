// Package web holds the live map: a page that draws the graph API's
// snapshots (topology.Handler) with cytoscape.js, refreshes them in place
// and highlights what changed (/api/v1/graph/diff). Its files are embedded:
// the page needs no network past the server that serves it.
//
// The JavaScript libraries under static/vendor are the npm packages' own
// pre-built files, pinned in npm/package-lock.json and copied by
// npm/vendor.sh (make vendor-js), with their licences.
package web

import (
	"embed"
	"encoding/json"
	"io/fs"
	"net/http"
	"time"
)

//go:embed static
var static embed.FS

// Config is what the page is told of where it runs.
type Config struct {
	// Refresh is how often the page asks for the graph again: the agent's
	// drain interval. Zero is 5s.
	Refresh time.Duration
	// Source says where the graph comes from: "agent" (its own host) or
	// "prometheus" (the cluster).
	Source string
	// Prometheus is the base URL of the Prometheus the graph is built from,
	// for links to the queries behind an edge; "" shows the queries alone.
	Prometheus string
	// MaxNodes is how many nodes the page draws at one level before it rolls
	// up to the next; zero is 2000.
	MaxNodes int
}

// pageConfig is Config as the page reads it, at /config.json.
type pageConfig struct {
	RefreshMS  int64  `json:"refresh_ms"`
	Source     string `json:"source"`
	Prometheus string `json:"prometheus,omitempty"`
	MaxNodes   int    `json:"max_nodes"`
}

// Handler serves the page at / and its files beside it; mount it at "/"
// beside the graph API, whose paths the page asks relative to its own.
func Handler(c Config) http.Handler {
	if c.Refresh <= 0 {
		c.Refresh = 5 * time.Second
	}
	if c.MaxNodes <= 0 {
		c.MaxNodes = 2000
	}
	cfg, _ := json.Marshal(pageConfig{RefreshMS: c.Refresh.Milliseconds(), Source: c.Source,
		Prometheus: c.Prometheus, MaxNodes: c.MaxNodes})
	sub, _ := fs.Sub(static, "static")
	files := http.FileServerFS(sub)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /config.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.Write(cfg)
	})
	mux.Handle("GET /{$}", files)
	for _, p := range []string{"/app.js", "/app.css", "/favicon.svg", "/vendor/"} {
		mux.Handle("GET "+p, files)
	}
	return mux
}
