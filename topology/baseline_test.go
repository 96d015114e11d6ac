package topology

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flowmap/flowmap/model"
)

// TestBaseline saves a baseline, lets the graph's hour pass it, and diffs
// against it: what vanished and what appeared since, which ?since= can no
// longer say.
func TestBaseline(t *testing.T) {
	g := New(Options{})
	g.Add(t0, flow(web1, api1, model.ProtoTCP, 8080, 2000, 50000, 0))
	h := newHandler(g, slog.New(slog.NewTextHandler(io.Discard, nil)))
	now := t0
	h.now = func() time.Time { return now }
	srv := httptest.NewServer(h.routes())
	defer srv.Close()
	do := func(method, path string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	code, body := do("POST", "/api/v1/graph/baseline?name=before-deploy&window=1m")
	var info BaselineInfo
	if err := json.Unmarshal([]byte(body), &info); code != http.StatusCreated || err != nil {
		t.Fatalf("POST baseline: %d %s (%v), want 201 and its JSON", code, body, err)
	}
	if info.Name != "before-deploy" || info.Level != LevelWorkload || info.Window.Name != "1m" || info.Edges != 1 {
		t.Errorf("POST baseline: %+v, want before-deploy at workload over 1m with 1 edge", info)
	}

	// Two hours on: web → api is gone, api → db is new.
	now = t0.Add(2 * time.Hour)
	g.Add(now, flow(api1, db0, model.ProtoTCP, 5432, 500, 120000, 0))
	if code, body := do("GET", "/api/v1/graph/diff?window=1m&since=2h"); code != http.StatusBadRequest {
		t.Errorf("diff since 2h: %d %s, want 400 (past the graph's hour)", code, body)
	}
	code, body = do("GET", "/api/v1/graph/diff?baseline=before-deploy")
	if code != http.StatusOK {
		t.Fatalf("diff against the baseline: %d %s, want 200", code, body)
	}
	d, err := ReadDiffJSON(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range d.Edges {
		got = append(got, e.ID+" "+strings.Join(e.Changes, ","))
	}
	want := []string{
		"workload:shop/api -> workload:shop/db tcp/5432 added",
		"workload:shop/web -> workload:shop/api tcp/8080 removed",
	}
	if !slices.Equal(got, want) {
		t.Errorf("diff against the baseline: edges %q, want %q", got, want)
	}
	if d.Level != LevelWorkload || d.Window.Name != "1m" || !d.Baseline.End.Equal(t0) {
		t.Errorf("diff against the baseline: level %s, window %s, baseline ending %s; want workload, 1m, %s", d.Level, d.Window.Name, d.Baseline.End, t0)
	}

	for _, tc := range []struct {
		method, path string
		code         int
		body         string
	}{
		{"GET", "/api/v1/graph/diff?baseline=nothing", 404, `no baseline "nothing"`},
		{"GET", "/api/v1/graph/diff?baseline=before-deploy&level=host", 400, "at level workload"},
		{"GET", "/api/v1/graph/diff?baseline=before-deploy&window=5m", 400, "over 1m"},
		{"GET", "/api/v1/graph/diff?baseline=before-deploy&window=1m&level=workload", 200, `"changes"`},
		{"GET", "/api/v1/graph/diff?baseline=before-deploy&since=10m", 400, "one of them"},
		{"GET", "/api/v1/graph/diff?baseline=before-deploy&factor=1", 400, "factor"},
		{"POST", "/api/v1/graph/baseline?name=a%20b", 400, "want 1 to 64"},
		{"POST", "/api/v1/graph/baseline", 400, "want 1 to 64"},
		{"POST", "/api/v1/graph/baseline?name=x&level=cluster", 400, `level "cluster"`},
		{"GET", "/api/v1/graph/baseline", 200, `[{"name":"before-deploy","level":"workload"`},
		{"PUT", "/api/v1/graph/baseline?name=x", 405, ""},
		{"DELETE", "/api/v1/graph/baseline?name=before-deploy", 204, ""},
		{"DELETE", "/api/v1/graph/baseline?name=before-deploy", 404, "no baseline"},
		{"GET", "/api/v1/graph/diff?baseline=before-deploy", 404, "no baseline"},
		{"GET", "/api/v1/graph/baseline", 200, "[]"},
	} {
		if code, body := do(tc.method, tc.path); code != tc.code || !strings.Contains(body, tc.body) {
			t.Errorf("%s %s: %d %.200q, want %d and %q", tc.method, tc.path, code, body, tc.code, tc.body)
		}
	}
}

// TestBaselineBounds checks that saving past MaxBaselines, or past
// MaxBaselineEdges in all, drops the oldest, and that one baseline past
// the edge bound alone is refused.
func TestBaselineBounds(t *testing.T) {
	snap := func(edges int) *Snapshot { return &Snapshot{Level: LevelWorkload, Edges: make([]Edge, edges)} }
	names := func(bs *baselines) []string {
		var n []string
		for _, i := range bs.infos() {
			n = append(n, i.Name)
		}
		return n
	}
	var bs baselines
	for i := range MaxBaselines + 2 {
		if err := bs.save(fmt.Sprint("b", i), snap(1), time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if got := names(&bs); len(got) != MaxBaselines || got[0] != "b2" || got[len(got)-1] != fmt.Sprint("b", MaxBaselines+1) {
		t.Errorf("after %d saves: %q, want the last %d", MaxBaselines+2, got, MaxBaselines)
	}
	// Saved again, a name is the newest.
	bs.save("b2", snap(1), time.Minute)
	if got := names(&bs); got[len(got)-1] != "b2" || len(got) != MaxBaselines {
		t.Errorf("after saving b2 again: %q, want b2 last and %d in all", got, MaxBaselines)
	}
	bs.save("big", snap(MaxBaselineEdges-1), time.Minute)
	if got := names(&bs); !slices.Equal(got, []string{"b2", "big"}) {
		t.Errorf("after a baseline of %d edges: %q, want the older dropped to fit %d edges", MaxBaselineEdges-1, got, MaxBaselineEdges)
	}
	if err := bs.save("huge", snap(MaxBaselineEdges+1), time.Minute); err == nil {
		t.Errorf("a baseline of %d edges saved, want it refused", MaxBaselineEdges+1)
	}
}
