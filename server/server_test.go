package server

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowmap/flowmap/model"
)

func batch(start time.Time, bytes uint64) model.Batch {
	return model.Batch{Start: start, End: start.Add(time.Second), Records: []model.Record{{
		Src: netip.MustParseAddr("198.51.100.2"), Dst: netip.MustParseAddr("198.51.100.3"),
		Proto: model.ProtoTCP, SrcPort: 40000, DstPort: 80,
		Forward: model.Direction{Bytes: bytes, Packets: 1},
	}}}
}

func TestServer(t *testing.T) {
	ready := errors.New("not attached")
	s := New(2, func() error { return ready }, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	s.ReportStatus(func() any { return []string{"netns"} })
	s.Handle("GET /extra", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "extra") }))
	t0 := time.Date(2026, 11, 25, 9, 0, 0, 0, time.UTC)
	for i, b := range []uint64{100, 200, 400} { // the first falls out: keep is 2
		s.Add(batch(t0.Add(time.Duration(i)*time.Second), b))
	}
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()

	for _, tc := range []struct {
		path   string
		status int
		bytes  uint64 // of the flow, for /api/v1/flows
		body   string // in the body, otherwise
	}{
		{"/api/v1/flows", 200, 400, ""},
		{"/api/v1/flows?last=2", 200, 600, ""},
		{"/api/v1/flows?last=9", 200, 600, ""},
		{"/api/v1/flows?last=0", 400, 0, "want a whole number"},
		{"/api/v1/flows?last=x", 400, 0, "want a whole number"},
		{"/healthz", 200, 0, "ok"},
		{"/readyz", 503, 0, `{"ready":false,"reason":"not attached","sources":["netns"]}`},
		{"/metrics", 200, 0, ""},
		{"/extra", 200, 0, "extra"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			resp, err := http.Get(srv.URL + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status = %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			if !strings.HasPrefix(tc.path, "/api/v1/flows") || tc.status != 200 {
				if !strings.Contains(string(body), tc.body) {
					t.Errorf("body = %q, want it to contain %q", body, tc.body)
				}
				return
			}
			var doc FlowsDoc
			if err := json.Unmarshal(body, &doc); err != nil {
				t.Fatalf("decode: %v", err)
			}
			if len(doc.Flows) != 1 || doc.Flows[0].Forward.Bytes != tc.bytes {
				t.Errorf("flows = %+v, want one of %d bytes", doc.Flows, tc.bytes)
			}
			if doc.Version != FlowsVersion || doc.End.IsZero() || !doc.Start.Before(doc.End) {
				t.Errorf("version %d, %s to %s: want %d and an interval", doc.Version, doc.Start, doc.End, FlowsVersion)
			}
		})
	}
	ready = nil
	resp, err := http.Get(srv.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/readyz once ready = %d, want 200", resp.StatusCode)
	}

	// A datapath warning is detail, not a reason to be unready.
	s.ReportDatapath(func() any { return map[string]any{"bypassable": []string{"veth1 ingress"}} })
	resp, err = http.Get(srv.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := `{"ready":true,"sources":["netns"],"datapath":{"bypassable":["veth1 ingress"]}}`; resp.StatusCode != 200 || strings.TrimSpace(string(body)) != want {
		t.Errorf("/readyz with a datapath warning = %d %s, want 200 %s", resp.StatusCode, body, want)
	}
}

// TestFlowsRepeatable checks that reading the flows leaves what the server
// keeps unchanged: /api/v1/flows?last=3 twice gives the same body, L7
// counts included (a merge once added into the stored records' L7).
func TestFlowsRepeatable(t *testing.T) {
	s := New(3, func() error { return nil }, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	t0 := time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)
	for i := range 3 {
		b := batch(t0.Add(time.Duration(i)*time.Second), 100)
		l := &model.L7{Protocol: model.L7HTTP}
		l.Methods[model.MethodGET] = 10
		l.Statuses[2] = 10
		b.Records[0].L7 = l
		s.Add(b)
	}
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	get := func() string {
		resp, err := http.Get(srv.URL + "/api/v1/flows?last=3")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return string(body)
	}
	first := get()
	var doc FlowsDoc
	if err := json.Unmarshal([]byte(first), &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Flows) != 1 || doc.Flows[0].L7 == nil || doc.Flows[0].L7.Methods[model.MethodGET] != 30 {
		t.Fatalf("flows = %+v, want one with 30 GETs", doc.Flows)
	}
	for i := range 2 {
		if again := get(); again != first {
			t.Fatalf("read %d:\n%s\nwant as the first:\n%s", i+2, again, first)
		}
	}
}
