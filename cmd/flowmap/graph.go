package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/flowmap/flowmap/topology"
)

func runGraph(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("flowmap graph", flag.ContinueOnError)
	fs.SetOutput(stderr)
	agentURL := fs.String("agent", "http://127.0.0.1:9477", "base URL of the agent's HTTP API")
	promURL := fs.String("prometheus", "",
		"base URL of a Prometheus HTTP API (or Thanos, Mimir, VictoriaMetrics) that scrapes every agent: build the cluster's graph from their flow series instead of asking one agent")
	selector := fs.String("selector", "", `with --prometheus, label matchers of the agents' series, as job="flowmap"`)
	level := topology.DefaultLevel
	fs.Var(&level, "level", "container, pod, workload, namespace or host")
	window := fs.String("window", "5m", "1m, 5m, 15m or 1h; with --prometheus, any duration")
	format := fs.String("format", "table", "json, dot, svg, png or table (svg and png need Graphviz's dot)")
	out := fs.String("o", "", "file to write (default: standard output)")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for the agent")
	var cf clientFlags
	cf.register(fs)
	diff := fs.String("diff", "", "write what changed since then instead of the graph: a duration before now (10m) or an RFC 3339 time; the baseline is the window of the same length that ended then (format json or table)")
	factor := fs.Float64("factor", topology.DefaultFactor, "with --diff, by how much an edge's rate or error ratio must move to count as changed")
	serve := fs.String("serve", "", "with --prometheus, serve the cluster's live map and the graph API on this address (as 127.0.0.1:9478) until interrupted")
	refresh := fs.Duration("refresh", 5*time.Second, "with --serve, how often the map refreshes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("graph: unexpected argument %q", fs.Arg(0))
	}
	win, err := topology.ParseWindow(*window)
	if err != nil && *promURL != "" {
		win, err = time.ParseDuration(*window)
	}
	if err != nil || win <= 0 {
		return fmt.Errorf("graph: window %q: want 1m, 5m, 15m or 1h (or, with --prometheus, a duration)", *window)
	}
	switch *format {
	case "json", "dot", "svg", "png", "table":
	default:
		return fmt.Errorf("graph: format %q: want json, dot, svg, png or table", *format)
	}
	client, err := cf.client()
	if err != nil {
		return fmt.Errorf("graph: %w", err)
	}
	if *serve != "" {
		if *promURL == "" {
			return errors.New("graph: --serve needs --prometheus (the agent serves its own map)")
		}
		return serveMap(ctx, *serve, topology.PromQL{URL: *promURL, Selector: *selector, Client: client}, *refresh, stderr)
	}
	if *diff != "" {
		return graphDiff(ctx, *timeout, diffArgs{agent: *agentURL, prometheus: *promURL, selector: *selector, client: client,
			level: level, window: *window, win: win, since: *diff, factor: *factor, format: *format, out: *out}, stdout)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	var s *topology.Snapshot
	if *promURL != "" {
		q := topology.PromQL{URL: *promURL, Selector: *selector, Client: client}
		s, err = q.Snapshot(ctx, time.Now(), level, win)
	} else {
		s, err = fetchGraphWith(ctx, client, *agentURL, level, *window)
	}
	if err != nil {
		return fmt.Errorf("graph: %w", err)
	}
	var b bytes.Buffer
	if err := writeGraph(ctx, &b, s, *format); err != nil {
		return fmt.Errorf("graph: %w", err)
	}
	if *out == "" {
		_, err = stdout.Write(b.Bytes())
		return err
	}
	if err := os.WriteFile(*out, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("graph: %w", err)
	}
	return nil
}

// fetchGraph gets the agent's graph at level over window, as JSON.
func fetchGraph(ctx context.Context, base string, level topology.Level, window string) (*topology.Snapshot, error) {
	return fetchGraphWith(ctx, http.DefaultClient, base, level, window)
}

// fetchGraphWith is fetchGraph through client.
func fetchGraphWith(ctx context.Context, client *http.Client, base string, level topology.Level, window string) (*topology.Snapshot, error) {
	u := strings.TrimSuffix(base, "/") + "/api/v1/graph?" + url.Values{
		"level": {string(level)}, "window": {window}, "format": {"json"}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", u, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch graph: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return nil, fmt.Errorf("fetch %s: %s: %s", u, resp.Status, bytes.TrimSpace(msg))
	}
	s, err := topology.ReadJSON(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", u, err)
	}
	return s, nil
}

// writeGraph writes the snapshot in format: json, dot, svg, png or table.
func writeGraph(ctx context.Context, w io.Writer, s *topology.Snapshot, format string) error {
	switch format {
	case "json":
		return topology.WriteJSON(w, s)
	case "table":
		return topology.WriteTable(w, s)
	case "dot", "svg", "png":
		return topology.Render(ctx, w, s, format)
	}
	return errors.New("unknown format " + format)
}
