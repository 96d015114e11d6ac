package topology

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// TestRenderLimit plays a client that asks for more svg renders at once
// than MaxRenders: each would start a dot process. Those past the limit get
// 503 with Retry-After, and once a render ends the next is served.
func TestRenderLimit(t *testing.T) {
	h := newHandler(fixture(), slog.New(slog.DiscardHandler))
	h.now = func() time.Time { return t0 }
	// The first MaxRenders renders run until released; one past them (if
	// the limit let it through) ends at once, so that the test fails
	// rather than hangs.
	started, release := make(chan struct{}), make(chan struct{})
	var running atomic.Int32
	h.render = func(ctx context.Context, w io.Writer, _ *Snapshot, _ string) error {
		if running.Add(1) <= MaxRenders {
			started <- struct{}{}
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		_, err := io.WriteString(w, "<svg/>")
		return err
	}
	srv := httptest.NewServer(h.routes())
	defer srv.Close()
	get := func() (int, string, string) {
		resp, err := http.Get(srv.URL + "/api/v1/graph?format=svg")
		if err != nil {
			t.Error(err)
			return 0, "", ""
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Retry-After"), string(body)
	}
	type answer struct {
		code int
		body string
	}
	done := make(chan answer, MaxRenders)
	for range MaxRenders {
		go func() {
			code, _, body := get()
			done <- answer{code, body}
		}()
		<-started // each holds a render
	}
	code, retry, body := get()
	if code != http.StatusServiceUnavailable || retry == "" {
		t.Errorf("render %d of %d at once: status %d, Retry-After %q (%q); want 503 and a Retry-After", MaxRenders+1, MaxRenders, code, retry, body)
	}
	close(release)
	for range MaxRenders {
		if a := <-done; a.code != http.StatusOK || a.body != "<svg/>" {
			t.Errorf("a render within the limit: status %d, body %q; want 200 and the svg", a.code, a.body)
		}
	}
	running.Store(MaxRenders) // the next render ends at once
	if code, _, body := get(); code != http.StatusOK {
		t.Errorf("a render after the others ended: status %d (%q), want 200", code, body)
	}
}

// TestJSONStream checks that the exports written an element at a time are
// byte for byte what json.Encoder writes of the whole document.
func TestJSONStream(t *testing.T) {
	indented := func(v any) string {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetIndent("", "  ")
		if err := enc.Encode(v); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	full := fixture().Snapshot(t0, LevelContainer, time.Hour)
	for _, tc := range []struct {
		name string
		s    *Snapshot
	}{
		{"full", full},
		{"nil", &Snapshot{Version: Version, Level: LevelHost}},
		{"empty", &Snapshot{Version: Version, Level: LevelPod, Nodes: []Node{}, Edges: []Edge{}}},
		{"one", &Snapshot{Version: Version, Level: LevelPod, Nodes: full.Nodes[:1], Edges: full.Edges[:1]}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := WriteJSON(&b, tc.s); err != nil {
				t.Fatal(err)
			}
			if want := indented(tc.s); b.String() != want {
				t.Errorf("WriteJSON:\n%s\nwant json.Encoder's:\n%s", b.String(), want)
			}
			b.Reset()
			if err := WriteNodeGraph(&b, tc.s); err != nil {
				t.Fatal(err)
			}
			if want := indented(ToNodeGraph(tc.s)); b.String() != want {
				t.Errorf("WriteNodeGraph:\n%s\nwant json.Encoder's:\n%s", b.String(), want)
			}
		})
	}
	h := newHandler(fixture(), slog.New(slog.DiscardHandler))
	h.now = func() time.Time { return t0 }
	srv := httptest.NewServer(h.routes())
	defer srv.Close()
	ng := ToNodeGraph(fixture().Snapshot(t0, DefaultLevel, DefaultWindow))
	for _, tc := range []struct {
		path string
		want any
	}{
		{"/api/v1/nodegraph/nodes", ng.Nodes},
		{"/api/v1/nodegraph/edges", ng.Edges},
		{"/api/v1/nodegraph/api/graph/data", ng},
	} {
		t.Run(tc.path, func(t *testing.T) {
			resp, err := http.Get(srv.URL + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			got, _ := io.ReadAll(resp.Body)
			want, _ := json.Marshal(tc.want)
			if string(got) != string(want)+"\n" {
				t.Errorf("body:\n%s\nwant json.Encoder's:\n%s", got, want)
			}
		})
	}
}
