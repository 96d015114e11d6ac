package topology

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/flowmap/flowmap/internal/testenv"
)

func TestHandler(t *testing.T) {
	testenv.MustHaveCommand(t, "dot")
	h := newHandler(fixture(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	h.now = func() time.Time { return t0 }
	srv := httptest.NewServer(h.routes())
	defer srv.Close()
	for _, tc := range []struct {
		path  string
		code  int
		ctype string
		body  string // a part of the body
	}{
		{"/api/v1/graph", 200, "application/json", `"level": "workload"`},
		{"/api/v1/graph?level=host&window=1h&format=json", 200, "application/json", `"id": "host:n2"`},
		{"/api/v1/graph?format=dot&level=container", 200, "text/vnd.graphviz; charset=utf-8", `"container:c-web-1" -> "container:c-api-1"`},
		{"/api/v1/graph?format=svg", 200, "image/svg+xml", "<svg"},
		{"/api/v1/graph?format=png", 200, "image/png", "\x89PNG"},
		{"/api/v1/graph?format=nodegraph", 200, "application/json", `"arc__sent"`},
		{"/api/v1/nodegraph/nodes?window=1h", 200, "application/json", `"title":"prometheus"`},
		{"/api/v1/nodegraph/edges?level=namespace", 200, "application/json", `"source":"namespace:shop"`},
		{"/api/v1/nodegraph/api/graph/fields", 200, "application/json", `"field_name":"arc__received"`},
		{"/api/v1/nodegraph/api/graph/data", 200, "application/json", `"edges":[`},
		{"/api/v1/nodegraph/api/health", 200, "text/plain; charset=utf-8", "ok"},
		{"/api/v1/graph?level=cluster", 400, "text/plain; charset=utf-8", `level "cluster"`},
		{"/api/v1/graph?window=2m", 400, "text/plain; charset=utf-8", `window "2m"`},
		{"/api/v1/graph?format=gif", 400, "text/plain; charset=utf-8", `format="gif"`},
	} {
		t.Run(tc.path, func(t *testing.T) {
			resp, err := http.Get(srv.URL + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.code {
				t.Errorf("status %d, want %d: %s", resp.StatusCode, tc.code, body)
			}
			if got := resp.Header.Get("Content-Type"); got != tc.ctype {
				t.Errorf("Content-Type %q, want %q", got, tc.ctype)
			}
			if !bytes.Contains(body, []byte(tc.body)) {
				t.Errorf("body %.200q…, want it to hold %q", body, tc.body)
			}
			if strings.HasPrefix(tc.ctype, "application/json") && !json.Valid(body) {
				t.Errorf("body is not JSON: %.200q", body)
			}
		})
	}
}
