package web_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/flowmap/flowmap/internal/browser"
	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/topology"
)

// benchGraph is a cluster of n containers on 8 hosts in 20 namespaces, in
// five tiers, with e edges mostly from one tier to the next.
func benchGraph(n, e int, at time.Time) *topology.Graph {
	eps := make([]model.Endpoint, n)
	for i := range eps {
		ns := fmt.Sprintf("ns-%02d", i%20)
		eps[i] = ep(fmt.Sprintf("c-%04d", i), ns, fmt.Sprintf("w-%03d", i/4), fmt.Sprintf("node-%d", i%8),
			netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}).String())
	}
	g := topology.New(topology.Options{})
	tier := n / 5
	var fs []model.Flow
	for k := range e {
		// Every container in at least one edge, then a fixed pseudo-random
		// spread.
		src := k % n
		if k >= n {
			src = (k * 7919) % n
		}
		dst := (src + tier + (k*31)%tier) % n
		fs = append(fs, flow(eps[src], eps[dst], uint16(8000+k) /* one port per edge: no two alike */, uint64(1000+k%977*10), uint64(20000+k%613*100)))
	}
	g.Add(at, fs...)
	return g
}

// BenchmarkPage measures the live map in headless Chromium on 2,000 nodes
// and 5,000 edges at the container level: the first render (fetch, layout
// and two frames), a refresh that adds 20 edges and 10 nodes, and the
// frame time while panning.
func BenchmarkPage(b *testing.B) {
	p := browser.New(b)
	now := time.Now()
	g := benchGraph(2000, 5000, now)
	srv := server(b, g, 2500) // above the 2,000 nodes and the ones the refreshes add
	s := apiGraph(b, srv, "container", "5m")
	if len(s.Nodes) != 2000 || len(s.Edges) != 5000 {
		b.Fatalf("graph of %d nodes and %d edges, want 2000 and 5000", len(s.Nodes), len(s.Edges))
	}
	var first, layout, refresh, frame float64
	extra := 0
	for b.Loop() {
		p.Do(b, "load the page", chromedp.Navigate("about:blank"), chromedp.Navigate(srv.URL+"/#level=container&window=5m"))
		p.Wait(b, "the first render", `window.flowmap && flowmap.ready`, `flowmap && flowmap.errors`, 2*time.Minute)
		first += browser.Eval[float64](b, p, `flowmap.timings.first.total`)
		layout += browser.Eval[float64](b, p, `flowmap.timings.phases.layout`)
		// New edges to 10 new containers; the refresh places them alone.
		var fs []model.Flow
		for i := range 20 {
			c := ep(fmt.Sprintf("new-%d", extra+i/2), "ns-new", "new", "node-0", "10.200.0.1")
			fs = append(fs, flow(c, ep("c-0000", "ns-00", "w-000", "node-0", "10.0.0.0"), 9000, 100, 100))
		}
		extra += 10
		g.Add(time.Now(), fs...)
		refresh += browser.Eval[float64](b, p, `flowmap.refresh().then(() => flowmap.timings.refresh.total)`)
		frame += browser.Eval[float64](b, p, `new Promise(done => {
			const cy = flowmap.cy; let n = 0, t0;
			const step = (t) => { if (n === 0) t0 = t; cy.panBy({x: 5, y: 3}); if (++n > 60) done((t - t0) / 60); else requestAnimationFrame(step); };
			requestAnimationFrame(step);
		})`)
	}
	b.ReportMetric(first/float64(b.N), "first-render-ms")
	b.ReportMetric(layout/float64(b.N), "layout-ms") // of the first render
	b.ReportMetric(refresh/float64(b.N), "refresh-ms")
	b.ReportMetric(frame/float64(b.N), "pan-frame-ms")
	if errs := p.Errors(); len(errs) > 0 {
		b.Errorf("page errors: %q", errs)
	}
}
