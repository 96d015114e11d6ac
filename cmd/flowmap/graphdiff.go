package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/flowmap/flowmap/topology"
)

// diffArgs are `flowmap graph --diff`'s settings.
type diffArgs struct {
	agent, prometheus, selector string
	client                      *http.Client
	level                       topology.Level
	window                      string
	win                         time.Duration
	since                       string
	factor                      float64
	format, out                 string
}

// graphDiff writes what changed since a.since, from the agent's
// /api/v1/graph/diff or from two PromQL snapshots.
func graphDiff(ctx context.Context, timeout time.Duration, a diffArgs, stdout io.Writer) error {
	if a.format != "table" && a.format != "json" {
		return fmt.Errorf("graph: --diff: format %q: want json or table", a.format)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d *topology.Diff
	var err error
	if a.prometheus != "" {
		d, err = promDiff(ctx, topology.PromQL{URL: a.prometheus, Selector: a.selector, Client: a.client}, time.Now(), a)
	} else {
		d, err = fetchDiff(ctx, a)
	}
	if err != nil {
		return fmt.Errorf("graph: %w", err)
	}
	var b bytes.Buffer
	if a.format == "json" {
		err = topology.WriteDiffJSON(&b, d)
	} else {
		err = topology.WriteDiffTable(&b, d)
	}
	if err != nil {
		return fmt.Errorf("graph: %w", err)
	}
	if a.out == "" {
		_, err = stdout.Write(b.Bytes())
		return err
	}
	if err := os.WriteFile(a.out, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("graph: %w", err)
	}
	return nil
}

// promDiff compares the cluster's window that ends now with the one that
// ends at since.
func promDiff(ctx context.Context, q topology.PromQL, now time.Time, a diffArgs) (*topology.Diff, error) {
	since, err := topology.ParseSince(a.since, now)
	if err != nil {
		return nil, err
	}
	base, err := q.Snapshot(ctx, since, a.level, a.win)
	if err != nil {
		return nil, err
	}
	s, err := q.Snapshot(ctx, now, a.level, a.win)
	if err != nil {
		return nil, err
	}
	return topology.Compare(base, s, a.factor), nil
}

// fetchDiff gets the agent's diff.
func fetchDiff(ctx context.Context, a diffArgs) (*topology.Diff, error) {
	u := strings.TrimSuffix(a.agent, "/") + "/api/v1/graph/diff?" + url.Values{
		"level": {string(a.level)}, "window": {a.window}, "since": {a.since},
		"factor": {strconv.FormatFloat(a.factor, 'g', -1, 64)}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", u, err)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch diff: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return nil, fmt.Errorf("fetch %s: %s: %s", u, resp.Status, bytes.TrimSpace(msg))
	}
	d, err := topology.ReadDiffJSON(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", u, err)
	}
	return d, nil
}
