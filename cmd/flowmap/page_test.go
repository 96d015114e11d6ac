package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/flowmap/flowmap/internal/browser"
	"github.com/flowmap/flowmap/internal/sandboxtest"
	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/sandbox"
	"github.com/flowmap/flowmap/topology"
)

// waitMap waits until the page draws what the agent's API says at level
// over window.
func waitMap(t *testing.T, p *browser.Page, agentURL, level, window string) *topology.Snapshot {
	t.Helper()
	var s *topology.Snapshot
	eventually(t, 15*time.Second, fmt.Sprintf("the map to draw the API's graph at %s over %s", level, window), func() (bool, string) {
		s = getGraph(t, agentURL, level, window)
		var got browser.Drawn
		drawn := browser.Eval[string](t, p, `flowmap.ready && flowmap.snapshot.level === '`+level+`' && flowmap.snapshot.window.name === '`+window+`' ? JSON.stringify(`+browser.DrawnJS+`) : "{}"`)
		json.Unmarshal([]byte(drawn), &got)
		want := browser.SnapshotDrawn(s)
		return slices.Equal(got.Nodes, want.Nodes) && slices.Equal(got.Edges, want.Edges), fmt.Sprintf("drawn %+v, API %+v", got, want)
	})
	return s
}

// TestAgentPage opens the agent's live map in headless Chromium while a
// sandbox sends traffic: the map draws the API's graph, a clicked edge
// shows the API's bytes, level and window switch as the API says, a new
// namespace's traffic appears without a reload, the diff marks it as new,
// and the page logs no error.
func TestAgentPage(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	testenv.MustHaveCommand(t, "go")
	p := browser.New(t)
	if err := sandbox.Cleanup("fmp"); err != nil {
		t.Fatal(err)
	}
	sb := sandboxtest.New(t, sandbox.Options{Prefix: "fmp", Subnet: cmdSubnet})
	a, b := addHost(t, sb, "a"), addHost(t, sb, "b")
	bin := buildFlowmap(t)
	agent := startAgent(t, bin, "--interfaces", "fmp-*")
	agentURL := "http://" + agent.addr

	port, _ := sendTo(t, a, b, 200_000)
	eventually(t, 10*time.Second, fmt.Sprintf("an edge to port %d in the API", port), func() (bool, string) {
		s := getGraph(t, agentURL, "workload", "5m")
		return slices.ContainsFunc(s.Edges, func(e topology.Edge) bool { return e.Port == port }), fmt.Sprint(s.Edges)
	})

	p.Do(t, "open the map", chromedp.Navigate(agentURL+"/"))
	waitMap(t, p, agentURL, "workload", "5m")

	// Click the edge a → b; its details show the API's bytes.
	s := getGraph(t, agentURL, "workload", "5m")
	e := s.Edges[slices.IndexFunc(s.Edges, func(e topology.Edge) bool { return e.Port == port })]
	pos := browser.Eval[struct{ X, Y float64 }](t, p, fmt.Sprintf(`(() => {
		const m = flowmap.cy.getElementById(%q).renderedMidpoint();
		const r = document.getElementById('cy').getBoundingClientRect();
		return {x: m.x + r.left, y: m.y + r.top};
	})()`, e.ID))
	p.Do(t, "click the edge", chromedp.MouseClickXY(pos.X, pos.Y))
	p.Wait(t, "the edge's details", fmt.Sprintf(`!document.getElementById('details').hidden && !!document.getElementById('bytes-fwd') && flowmap.snapshot.edges.some(e => e.id === %q)`, e.ID),
		`document.getElementById('detailsbody').innerText`, 5*time.Second)
	e, _ = findEdge(getGraph(t, agentURL, "workload", "5m"), e.ID)
	got := browser.Eval[[]string](t, p, `[document.getElementById('bytes-fwd').textContent, document.getElementById('bytes-rev').textContent]`)
	if want := []string{fmt.Sprint(e.Forward.Bytes), fmt.Sprint(e.Reverse.Bytes)}; !slices.Equal(got, want) {
		t.Errorf("details of %s: bytes %q, want the API's %q", e.ID, got, want)
	}
	if e.Forward.Bytes < 200_000 {
		t.Errorf("edge %s: %d bytes forward, want at least the 200000 sent", e.ID, e.Forward.Bytes)
	}

	// Level and window.
	for _, c := range []struct{ control, value, level, window string }{
		{"level", "host", "host", "5m"},
		{"window", "1m", "host", "1m"},
		{"level", "container", "container", "1m"},
		{"window", "5m", "container", "5m"},
	} {
		p.Do(t, "switch "+c.control, chromedp.Evaluate[chromedp.Void](fmt.Sprintf(
			`(() => { const s = document.getElementById(%q); s.value = %q; s.dispatchEvent(new Event('change')); })()`, c.control, c.value)))
		waitMap(t, p, agentURL, c.level, c.window)
	}

	// A new namespace's traffic, without a reload; with the diff on, it is
	// marked new.
	p.Do(t, "show changes since 1m", chromedp.Evaluate[chromedp.Void](`(() => { window.notReloaded = true;
		const s = document.getElementById('diff'); s.value = '1m'; s.dispatchEvent(new Event('change')); })()`))
	c := addHost(t, sb, "c")
	cport, _ := sendTo(t, c, b, 50_000)
	eventually(t, 10*time.Second, fmt.Sprintf("an edge to port %d from the new namespace in the API", cport), func() (bool, string) {
		s := getGraph(t, agentURL, "container", "5m")
		return slices.ContainsFunc(s.Edges, func(e topology.Edge) bool { return e.Port == cport }), fmt.Sprint(s.Edges)
	})
	s = waitMap(t, p, agentURL, "container", "5m")
	i := slices.IndexFunc(s.Edges, func(e topology.Edge) bool { return e.Port == cport })
	p.Wait(t, "the new edge marked new", fmt.Sprintf(`flowmap.cy.getElementById(%q).hasClass('added')`, s.Edges[i].ID),
		`flowmap.diff && JSON.stringify(flowmap.diff.edges)`, 10*time.Second)
	if !browser.Eval[bool](t, p, `window.notReloaded === true`) {
		t.Errorf("the page reloaded")
	}
	if errs := p.Errors(); len(errs) > 0 {
		t.Errorf("page errors: %s", strings.Join(errs, "\n"))
	}
}
