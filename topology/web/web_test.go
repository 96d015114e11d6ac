package web_test

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/flowmap/flowmap/internal/browser"
	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/topology"
	"github.com/flowmap/flowmap/topology/web"
)

// ep is a container of workload in namespace ns on host node, with an
// image, an app label and the node's zone.
func ep(name, ns, workload, node string, addr string) model.Endpoint {
	return model.Endpoint{Kind: model.KindContainer, ID: "c-" + name, Name: name, Namespace: ns, Workload: workload,
		WorkloadKind: "Deployment", Node: node, Addrs: []netip.Addr{netip.MustParseAddr(addr)},
		Image:  "registry.example/" + workload + ":1.2",
		Labels: map[string]string{"app": workload, "topology.kubernetes.io/zone": "zone-" + node}}
}

func flow(src, dst model.Endpoint, port uint16, fwd, rev uint64) model.Flow {
	f := model.Flow{SrcEndpoint: src, DstEndpoint: dst}
	f.Proto, f.SrcPort, f.DstPort = model.ProtoTCP, 40000, port
	f.Forward = model.Direction{Bytes: fwd, Packets: fwd/1000 + 1, TCPFlags: model.FlagSYNOnly}
	f.Reverse = model.Direction{Bytes: rev, Packets: rev/1000 + 1}
	f.HandshakeRTT = 120 * time.Microsecond
	return f
}

var (
	web1     = ep("web-1", "shop", "web", "n1", "192.0.2.11")
	web2     = ep("web-2", "shop", "web", "n2", "192.0.2.12")
	api1     = ep("api-1", "shop", "api", "n1", "192.0.2.13")
	db0      = ep("db-0", "shop", "db", "n2", "192.0.2.14")
	payments = model.Endpoint{Kind: model.KindExternal, ID: "203.0.113.10", Name: "payments.example",
		Addrs: []netip.Addr{netip.MustParseAddr("203.0.113.10")}}
	batch = ep("report-1", "batch", "report", "n2", "192.0.2.20")
)

// server serves the page and the graph API of g, refreshing every 200ms.
func server(t testing.TB, g *topology.Graph, maxNodes int) *httptest.Server {
	mux := http.NewServeMux()
	mux.Handle("/api/", topology.Handler(g, slog.New(slog.NewTextHandler(io.Discard, nil))))
	mux.Handle("/", web.Handler(web.Config{Refresh: 200 * time.Millisecond, Source: "agent", MaxNodes: maxNodes}))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func apiGraph(t testing.TB, srv *httptest.Server, level, window string) *topology.Snapshot {
	t.Helper()
	resp, err := http.Get(srv.URL + "/api/v1/graph?" + url.Values{"level": {level}, "window": {window}}.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	s, err := topology.ReadJSON(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// waitDrawn waits until the map draws what the API says at level over
// window.
func waitDrawn(t *testing.T, p *browser.Page, srv *httptest.Server, level, window string) browser.Drawn {
	t.Helper()
	want := browser.SnapshotDrawn(apiGraph(t, srv, level, window))
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // as JSON.stringify writes "->"
	enc.Encode(want)
	w := strings.TrimSpace(b.String())
	p.Wait(t, fmt.Sprintf("the map draws the API's graph at %s over %s", level, window),
		fmt.Sprintf(`flowmap.ready && flowmap.snapshot.level === %q && flowmap.snapshot.window.name === %q && JSON.stringify(%s) === %q`,
			level, window, browser.DrawnJS, w),
		`JSON.stringify(`+browser.DrawnJS+`) + " want " + `+fmt.Sprintf("%q", w), 10*time.Second)
	return want
}

// TestPage drives the page in Chromium on a synthetic graph: it draws the
// API's nodes and edges, an edge's details show the API's bytes, level and
// window switch as the API says (and land in the URL), a new namespace's
// traffic appears without a reload and without moving what was drawn, the
// diff highlights a new edge, and nothing is logged as an error.
func TestPage(t *testing.T) {
	p := browser.New(t)
	g := topology.New(topology.Options{})
	now := time.Now()
	// Seven minutes ago, in a bucket that ends before the last 5 minutes:
	// web-2 to db, and the baseline of a diff since 5m.
	g.Add(now.Add(-7*time.Minute), flow(web2, db0, 5432, 400, 90000), flow(web1, api1, 8080, 2000, 50000))
	g.Add(now, flow(web1, api1, 8080, 2100, 52000), flow(api1, db0, 5432, 500, 120000))
	srv := server(t, g, 0)

	p.Do(t, "load the page", chromedp.Navigate(srv.URL+"/#window=1m"))
	want := waitDrawn(t, p, srv, "workload", "1m")
	if len(want.Edges) != 2 {
		t.Fatalf("the API's graph has edges %q, want 2", want.Edges)
	}

	t.Run("edge details", func(t *testing.T) {
		s := apiGraph(t, srv, "workload", "1m")
		e := s.Edges[slices.IndexFunc(s.Edges, func(e topology.Edge) bool { return e.Target == "workload:shop/api" })]
		pos := browser.Eval[struct{ X, Y float64 }](t, p, fmt.Sprintf(`(() => {
			const m = flowmap.cy.getElementById(%q).renderedMidpoint();
			const r = document.getElementById('cy').getBoundingClientRect();
			return {x: m.x + r.left, y: m.y + r.top};
		})()`, e.ID))
		p.Do(t, "click the edge", chromedp.MouseClickXY(pos.X, pos.Y))
		p.Wait(t, "the details show the edge", `!document.getElementById('details').hidden && !!document.getElementById('bytes-fwd')`,
			`document.getElementById('detailsbody').innerText`, 5*time.Second)
		got := browser.Eval[[]string](t, p, `[document.getElementById('bytes-fwd').textContent, document.getElementById('bytes-rev').textContent]`)
		if wantB := []string{fmt.Sprint(e.Forward.Bytes), fmt.Sprint(e.Reverse.Bytes)}; !slices.Equal(got, wantB) {
			t.Errorf("details of %s: bytes %q, want the API's %q", e.ID, got, wantB)
		}
		if h := browser.Eval[string](t, p, `location.hash`); !strings.Contains(h, "sel=") {
			t.Errorf("location.hash %q, want the selection in it", h)
		}
	})

	t.Run("node details", func(t *testing.T) {
		s := apiGraph(t, srv, "workload", "1m")
		n := s.Nodes[slices.IndexFunc(s.Nodes, func(n topology.Node) bool { return n.ID == "workload:shop/api" })]
		if n.Image == "" || n.Zone == "" || len(n.Labels) == 0 {
			t.Fatalf("the API's node %s: image %q, zone %q, labels %v; want all three", n.ID, n.Image, n.Zone, n.Labels)
		}
		pos := browser.Eval[struct{ X, Y float64 }](t, p, fmt.Sprintf(`(() => {
			const m = flowmap.cy.getElementById(%q).renderedPosition();
			const r = document.getElementById('cy').getBoundingClientRect();
			return {x: m.x + r.left, y: m.y + r.top};
		})()`, n.ID))
		p.Do(t, "click the node", chromedp.MouseClickXY(pos.X, pos.Y))
		p.Wait(t, "the details show the node", fmt.Sprintf(`!document.getElementById('details').hidden && document.querySelector('#detailsbody div') && document.querySelector('#detailsbody div').textContent === %q`, n.ID),
			`document.getElementById('detailsbody').innerText`, 5*time.Second)
		type shown struct {
			Image, Zone string
			Labels      map[string]string
		}
		got := browser.Eval[shown](t, p, `(() => { const b = document.getElementById('detailsbody'), labels = {};
			b.querySelectorAll('ul.labels li').forEach(li => labels[li.dataset.key] = li.querySelector('.v').textContent);
			return {image: b.querySelector('.image').textContent, zone: b.querySelector('.zone').textContent, labels}; })()`)
		if want := (shown{n.Image, n.Zone, n.Labels}); got.Image != want.Image || got.Zone != want.Zone || !maps.Equal(got.Labels, want.Labels) {
			t.Errorf("details of %s: %+v, want the API's %+v", n.ID, got, want)
		}
	})

	t.Run("level and window", func(t *testing.T) {
		for _, c := range []struct{ control, value, level, window string }{
			{"level", "container", "container", "1m"},
			{"window", "15m", "container", "15m"},
			{"level", "namespace", "namespace", "15m"},
			{"window", "5m", "namespace", "5m"},
			{"level", "workload", "workload", "5m"},
		} {
			p.Do(t, "switch "+c.control, chromedp.Evaluate[chromedp.Void](fmt.Sprintf(
				`(() => { const s = document.getElementById(%q); s.value = %q; s.dispatchEvent(new Event('change')); })()`, c.control, c.value)))
			waitDrawn(t, p, srv, c.level, c.window)
			h := browser.Eval[string](t, p, `location.hash`)
			for _, kv := range []string{"level=" + c.level, "window=" + c.window} {
				if !strings.Contains(h, kv) && kv != "level=workload" && kv != "window=5m" {
					t.Errorf("after %s=%s, location.hash %q, want %s in it", c.control, c.value, h, kv)
				}
			}
		}
		if n, m := len(apiGraph(t, srv, "container", "1m").Edges), len(apiGraph(t, srv, "container", "15m").Edges); n != 2 || m != 3 {
			t.Errorf("container edges over 1m and 15m: %d and %d, want 2 and 3 (web-2 to db only in the 15m window)", n, m)
		}
	})

	t.Run("new namespace live", func(t *testing.T) {
		before := browser.Eval[map[string]struct{ X, Y float64 }](t, p, `(() => { window.notReloaded = true;
			const o = {}; flowmap.cy.nodes().filter(n => !n.isParent()).forEach(n => o[n.id()] = n.position()); return o; })()`)
		g.Add(time.Now(), flow(batch, api1, 8080, 900, 4000))
		waitDrawn(t, p, srv, "workload", "5m")
		after := browser.Eval[map[string]struct{ X, Y float64 }](t, p, `(() => { const o = {};
			flowmap.cy.nodes().filter(n => !n.isParent()).forEach(n => o[n.id()] = n.position()); return o; })()`)
		if !browser.Eval[bool](t, p, `window.notReloaded === true`) {
			t.Errorf("the page reloaded")
		}
		if _, ok := after["workload:batch/report"]; !ok {
			t.Errorf("no node workload:batch/report after the refresh: %v", after)
		}
		for id, b := range before {
			if a, ok := after[id]; !ok || a != b {
				t.Errorf("node %s moved from %v to %v on a refresh, want it to stay", id, b, a)
			}
		}
		if !browser.Eval[bool](t, p, `flowmap.cy.getElementById('g:ns:n2/batch').length === 1`) {
			t.Errorf("no box for namespace batch on n2")
		}
	})

	t.Run("diff", func(t *testing.T) {
		g.Add(time.Now(), flow(api1, payments, 443, 1500, 6000))
		p.Do(t, "show changes since 5m", chromedp.Navigate(srv.URL+"/#diff=5m"))
		id := "workload:shop/api -> external:203.0.113.10 tcp/443"
		p.Wait(t, "the new edge is highlighted", fmt.Sprintf(`flowmap.ready && flowmap.diff != null && flowmap.cy.getElementById(%q).hasClass('added')`, id),
			`flowmap.diff && JSON.stringify(flowmap.diff.edges.map(e => e.id + ' ' + e.changes))`, 10*time.Second)
		if browser.Eval[bool](t, p, `flowmap.cy.getElementById('workload:shop/web -> workload:shop/api tcp/8080').hasClass('added')`) {
			t.Errorf("edge web → api is highlighted as new; it was there before")
		}
	})

	t.Run("filters in the URL", func(t *testing.T) {
		p.Do(t, "filter", chromedp.Navigate(srv.URL+"/#window=5m&ns=batch&min=1"))
		p.Wait(t, "only namespace batch's edges", `flowmap.ready && flowmap.snapshot.window.name === '5m' && flowmap.cy.edges().length === 1 && flowmap.cy.edges()[0].source().id() === 'workload:batch/report'`,
			browser.DrawnJS, 10*time.Second)
		p.Do(t, "hide externals and focus", chromedp.Navigate(srv.URL+"/#window=15m&ext=0&focus=workload:shop/db&hops=1"))
		p.Wait(t, "db and its neighbours, no external", `flowmap.ready && flowmap.cy.nodes().filter(n => !n.isParent()).map(n => n.id()).sort().join() === 'workload:shop/api,workload:shop/db,workload:shop/web'`,
			`JSON.stringify(`+browser.DrawnJS+`)`, 10*time.Second)
	})

	t.Run("rolls up", func(t *testing.T) {
		small := server(t, g, 3)
		p.Do(t, "load a page that draws 3 nodes", chromedp.Navigate(small.URL+"/#level=container&window=5m"))
		p.Wait(t, "rolled up to namespaces", `flowmap.ready && flowmap.snapshot.level === 'namespace' && !document.getElementById('banner').hidden`,
			`flowmap.snapshot && flowmap.snapshot.level + ': ' + document.getElementById('banner').textContent`, 10*time.Second)
		if got := browser.Eval[string](t, p, `document.getElementById('banner').textContent`); !strings.Contains(got, "container level") {
			t.Errorf("banner %q, want it to say the container level had too many nodes", got)
		}
	})

	if errs := p.Errors(); len(errs) > 0 {
		t.Errorf("page errors: %q", errs)
	}
}

// TestHandler serves the page's files from the binary, and nothing else.
func TestHandler(t *testing.T) {
	srv := httptest.NewServer(web.Handler(web.Config{Refresh: 2 * time.Second, Prometheus: "http://prom:9090"}))
	defer srv.Close()
	for _, tc := range []struct {
		path  string
		code  int
		ctype string
		body  string
	}{
		{"/", 200, "text/html; charset=utf-8", `<script src="app.js">`},
		{"/app.js", 200, "text/javascript; charset=utf-8", "flowmap"},
		{"/app.css", 200, "text/css; charset=utf-8", "#cy"},
		{"/vendor/cytoscape.min.js", 200, "text/javascript; charset=utf-8", `version="3.35.0"`},
		{"/vendor/cytoscape-dagre.min.js", 200, "text/javascript; charset=utf-8", "cytoscape-dagre"},
		{"/vendor/LICENSE.dagre", 200, "", "Permission is hereby granted"},
		{"/config.json", 200, "application/json", `{"refresh_ms":2000,"source":"","prometheus":"http://prom:9090","max_nodes":2000}`},
		{"/index.html", 404, "", ""},
		{"/nothing", 404, "", ""},
	} {
		t.Run(tc.path, func(t *testing.T) {
			c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			resp, err := c.Get(srv.URL + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.code {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.code)
			}
			if got := resp.Header.Get("Content-Type"); tc.ctype != "" && got != tc.ctype {
				t.Errorf("Content-Type %q, want %q", got, tc.ctype)
			}
			if !strings.Contains(string(body), tc.body) {
				t.Errorf("body %.100q…, want it to hold %q", body, tc.body)
			}
		})
	}
}
