package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/topology"
)

// TestGraphDiff asks an agent's graph API what changed in the last minute:
// `flowmap graph --diff` prints the new edge, as a table and as JSON.
func TestGraphDiff(t *testing.T) {
	g := topology.New(topology.Options{})
	ep := func(name string) model.Endpoint {
		return model.Endpoint{Kind: model.KindContainer, ID: name, Name: name, Namespace: "shop", Workload: name,
			Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}}
	}
	f := model.Flow{SrcEndpoint: ep("web"), DstEndpoint: ep("api")}
	f.Proto, f.DstPort, f.Forward.Bytes, f.Forward.Packets = model.ProtoTCP, 8080, 1000, 1
	g.Add(time.Now(), f)
	srv := httptest.NewServer(topology.Handler(g, slog.New(slog.NewTextHandler(io.Discard, nil))))
	defer srv.Close()
	for _, tc := range []struct {
		format string
		want   string
	}{
		{"table", "workload:shop/web -> workload:shop/api tcp/8080  added"},
		{"json", `"changes": [
        "added"
      ]`},
	} {
		t.Run(tc.format, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), []string{"graph", "--agent=" + srv.URL, "--window=1m", "--diff=5m", "--format=" + tc.format}, &stdout, &stderr)
			if err != nil {
				t.Fatalf("flowmap graph --diff: %v: %s", err, stderr.String())
			}
			if !strings.Contains(stdout.String(), tc.want) {
				t.Errorf("flowmap graph --diff --format=%s wrote\n%s\nwant it to hold %q", tc.format, stdout.String(), tc.want)
			}
			if tc.format == "json" && !json.Valid(stdout.Bytes()) {
				t.Errorf("not JSON: %s", stdout.String())
			}
		})
	}
}
