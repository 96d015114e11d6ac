package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/flowmap/flowmap/server"
	"github.com/flowmap/flowmap/topology"
	"github.com/flowmap/flowmap/topology/web"
)

// mountPage serves the live map at / beside the agent's graph API.
func mountPage(srv *server.Server, refresh time.Duration) {
	srv.Handle("/", web.Handler(web.Config{Refresh: refresh, Source: "agent"}))
}

// serveMap serves the cluster's map and graph API, built from Prometheus,
// on addr until ctx is done.
func serveMap(ctx context.Context, addr string, q topology.PromQL, refresh time.Duration, stderr io.Writer) error {
	log := slog.New(slog.NewTextHandler(stderr, nil))
	mux := http.NewServeMux()
	api := topology.HandlerFor(&q, log.With("component", "topology"))
	mux.Handle("/api/", api)
	mux.Handle("/", web.Handler(web.Config{Refresh: refresh, Source: "prometheus", Prometheus: q.URL}))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("graph: listen on %s: %w", addr, err)
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		hs.Shutdown(sctx)
	}()
	log.Info("listening", "addr", ln.Addr().String(), "map", "http://"+ln.Addr().String()+"/")
	if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("graph: serve: %w", err)
	}
	return nil
}
