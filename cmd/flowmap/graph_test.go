package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flowmap/flowmap/internal/sandboxtest"
	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/sandbox"
	"github.com/flowmap/flowmap/topology"
)

// graphSubnet is this file's sandbox subnet: free of the other packages'
// test subnets, so that go test ./... can run them at once.
var graphSubnet = netip.MustParsePrefix("198.51.100.128/26")

// TestGraphPrometheus runs the agent on a sandbox with traffic and a real
// Prometheus scraping it: PromQL returns the bytes the agent's JSON says, a
// scan of a thousand ports stays under the series cap, the dashboard's
// queries and the alerting rules work on what Prometheus scraped, and
// `flowmap graph` writes what the agent serves.
func TestGraphPrometheus(t *testing.T) {
	testenv.MustBeRoot(t)
	promBin := testenv.MustHaveCommand(t, "prometheus")
	testenv.MustHaveCommand(t, "dot")
	testenv.MustHaveCommand(t, "go")
	bin := buildGraphBinary(t)

	sb := sandboxtest.New(t, sandbox.Options{Prefix: "fmg", Subnet: graphSubnet})
	a := mustAddHost(t, sb, "a")
	b := mustAddHost(t, sb, "b")

	const maxEdges = 100
	agentAddr := freeAddr(t)
	// Ends named by address (no inventory): this test is about the
	// exports; naming has its own tests in enrich.
	startProcess(t, "agent", bin, "agent", "--interfaces=fmg-*", "--interval=500ms", "--listen="+agentAddr,
		"--no-inventory", "--metrics-level=container", "--metrics-max-edges="+strconv.Itoa(maxEdges))
	agentURL := "http://" + agentAddr
	waitHTTP(t, agentURL+"/readyz", 30*time.Second)
	prom := startPrometheus(t, promBin, agentAddr)

	// Five connections from a to b:8080, each 100 kB up and 10 kB down.
	ln, err := b.Listen("tcp4", b.Addr.String()+":8080")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.CopyN(io.Discard, c, 100<<10)
				c.Write(make([]byte, 10<<10))
			}()
		}
	}()
	for range 5 {
		c, err := a.Dial("tcp4", b.Addr.String()+":8080")
		if err != nil {
			t.Fatal(err)
		}
		c.Write(make([]byte, 100<<10))
		io.Copy(io.Discard, c)
		c.Close()
	}

	src, dst := a.Addr.String(), b.Addr.String()
	edgeID := "unknown:" + src + " -> unknown:" + dst + " tcp/8080"
	var edge topology.Edge
	eventually(t, 30*time.Second, "PromQL bytes of a → b:8080 equal to the agent's JSON", func() (bool, string) {
		s := getGraph(t, agentURL, "container", "5m")
		var ok bool
		if edge, ok = findEdge(s, edgeID); !ok {
			return false, "no edge " + edgeID + " in the JSON"
		}
		sel := fmt.Sprintf(`flowmap_flow_bytes_total{src=%q,dst=%q,proto="tcp",port="8080",direction=%%q}`, src, dst)
		fwd, fok := promScalar(t, prom, fmt.Sprintf(sel, "forward"))
		rev, rok := promScalar(t, prom, fmt.Sprintf(sel, "reverse"))
		msg := fmt.Sprintf("JSON %d B forward, %d B reverse; PromQL %v (%v), %v (%v)", edge.Forward.Bytes, edge.Reverse.Bytes, fwd, fok, rev, rok)
		return fok && rok && uint64(fwd) == edge.Forward.Bytes && uint64(rev) == edge.Reverse.Bytes, msg
	})
	if edge.Forward.Bytes < 5*100<<10 || edge.Reverse.Bytes < 5*10<<10 || edge.Connections != 5 {
		t.Errorf("edge a → b:8080: %d B forward, %d B reverse, %d connections; want over %d B, over %d B, 5",
			edge.Forward.Bytes, edge.Reverse.Bytes, edge.Connections, 5*100<<10, 5*10<<10)
	}
	if conns, _ := promScalar(t, prom, fmt.Sprintf(`flowmap_tcp_connections_total{src=%q,dst=%q,port="8080",outcome="attempted"}`, src, dst)); conns != 5 {
		t.Errorf("flowmap_tcp_connections_total of a → b:8080 = %v, want 5", conns)
	}
	if n, _ := promScalar(t, prom, fmt.Sprintf(`flowmap_tcp_handshake_rtt_seconds_count{src=%q,dst=%q,port="8080"}`, src, dst)); n != 5 {
		t.Errorf("flowmap_tcp_handshake_rtt_seconds_count of a → b:8080 = %v, want 5", n)
	}

	// A scan of a thousand closed ports: a thousand edges.
	for port := 20000; port < 21000; port++ {
		if c, err := a.Dial("tcp4", net.JoinHostPort(dst, strconv.Itoa(port))); err == nil {
			c.Close()
		}
	}
	eventually(t, 30*time.Second, "the scan in the JSON and in Prometheus, all bytes equal", func() (bool, string) {
		s := getGraph(t, agentURL, "container", "5m")
		var jsonBytes uint64
		scanned := 0
		for _, e := range s.Edges {
			jsonBytes += e.Bytes()
			if e.Port >= 20000 && e.Port < 21000 {
				scanned++
			}
		}
		promBytes, _ := promScalar(t, prom, `sum(flowmap_flow_bytes_total)`)
		return scanned == 1000 && uint64(promBytes) == jsonBytes,
			fmt.Sprintf("%d scanned ports in the JSON, want 1000; all bytes: JSON %d, PromQL %v", scanned, jsonBytes, promBytes)
	})
	for _, c := range []struct {
		expr     string
		min, max float64
	}{
		// Every label set (src, dst, proto, port) of every flow series.
		{`count(count by (src, dst, proto, port) ({__name__=~"flowmap_flow_bytes_total|flowmap_flow_packets_total|flowmap_tcp_connections_total|flowmap_tcp_handshake_rtt_seconds_bucket"}))`, maxEdges, maxEdges + 1},
		{`count(flowmap_flow_bytes_total)`, 2 * maxEdges, 2 * (maxEdges + 1)},
		{`count(flowmap_tcp_handshake_rtt_seconds_bucket)`, 0, (maxEdges + 1) * float64(len(topology.RTTBuckets)+1)},
		{`flowmap_flow_series_edges`, maxEdges, maxEdges},
		{`flowmap_flow_overflow_flows_total`, 1000 - maxEdges, 1e9},
		{`sum(flowmap_tcp_connections_total{src="overflow",outcome="attempted"})`, 1000 - maxEdges, 1000},
	} {
		if v, ok := promScalar(t, prom, c.expr); !ok || v < c.min || v > c.max {
			t.Errorf("%s = %v (result: %v), want %v to %v", c.expr, v, ok, c.min, c.max)
		}
	}

	t.Run("flowmap graph --serve", func(t *testing.T) { checkServe(t, bin, prom, edge) })
	t.Run("flowmap graph --diff --prometheus", func(t *testing.T) {
		// Prometheus began with the test: ten minutes ago it had nothing,
		// so a → b:8080 is new.
		out, err := exec.Command(bin, "graph", "--prometheus", prom, "--level", "container", "--window", "5m",
			"--diff", "10m", "--format", "json").Output()
		if err != nil {
			t.Fatalf("flowmap graph --diff --prometheus: %v", err)
		}
		d, err := topology.ReadDiffJSON(bytes.NewReader(out))
		if err != nil {
			t.Fatalf("flowmap graph --diff --prometheus wrote %.300q: %v", out, err)
		}
		i := slices.IndexFunc(d.Edges, func(c topology.EdgeChange) bool { return c.ID == edge.ID })
		if i < 0 || !slices.Equal(d.Edges[i].Changes, []string{topology.ChangeAdded}) || d.Edges[i].RateBefore != 0 || d.Edges[i].RateAfter <= 0 {
			t.Errorf("flowmap graph --diff --prometheus: edges %+v, want %s added", d.Edges, edge.ID)
		}
		for _, id := range []string{edge.Source, edge.Target} {
			if !slices.ContainsFunc(d.Nodes, func(c topology.NodeChange) bool { return c.ID == id && c.Change == topology.ChangeAdded }) {
				t.Errorf("flowmap graph --diff --prometheus: nodes %+v, want %s added", d.Nodes, id)
			}
		}
		table, err := exec.Command(bin, "graph", "--prometheus", prom, "--level", "container", "--window", "5m", "--diff", "10m").Output()
		if err != nil {
			t.Fatalf("flowmap graph --diff --prometheus --format table: %v", err)
		}
		// The table pads its columns.
		if want := regexp.MustCompile(regexp.QuoteMeta(edge.ID) + ` +added `); !want.Match(table) {
			t.Errorf("flowmap graph --diff --prometheus --format table wrote\n%s\nwant a line matching %q", table, want)
		}
	})
	t.Run("dashboard", func(t *testing.T) { checkDashboard(t, prom, agentURL) })
	t.Run("rules", func(t *testing.T) { checkRules(t, prom) })
	t.Run("flowmap graph", func(t *testing.T) {
		dir := t.TempDir()
		for _, format := range []string{"json", "dot", "svg", "png", "table"} {
			out := filepath.Join(dir, "g."+format)
			cmd := exec.Command(bin, "graph", "--agent", agentURL, "--level", "container", "--window", "5m", "--format", format, "-o", out)
			if msg, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("flowmap graph --format %s: %v\n%s", format, err, msg)
			}
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]string{"json": `"source": "unknown:` + src, "dot": `"unknown:` + src + `" -> "unknown:` + dst + `"`,
				"svg": "<svg", "png": "\x89PNG", "table": src}[format]
			if !bytes.Contains(got, []byte(want)) {
				t.Errorf("flowmap graph --format %s wrote %.300q…, want it to hold %q", format, got, want)
			}
			if format == "json" {
				s, err := topology.ReadJSON(bytes.NewReader(got))
				if err != nil {
					t.Fatal(err)
				}
				if e, ok := findEdge(s, edgeID); !ok || e.Forward.Bytes != edge.Forward.Bytes {
					t.Errorf("flowmap graph's JSON: edge %s %+v (%v), want %d B forward", edgeID, e, ok, edge.Forward.Bytes)
				}
			}
		}
	})
}

// checkDashboard runs the Grafana dashboard's queries: PromQL on the real
// Prometheus, the Infinity URLs on the agent; each must return data with
// the fields the panels read.
func checkDashboard(t *testing.T, prom, agentURL string) {
	raw, err := os.ReadFile("../../deploy/grafana/flowmap.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Type    string
			Targets []struct {
				RefID   string
				Expr    string
				URL     string
				Format  string
				Columns []struct{ Selector, Type string }
			}
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	vars := strings.NewReplacer("$__rate_interval", "1m", "${src:regex}", ".*", "${agent}", agentURL, "${level}", "workload", "${window}", "5m")
	nodeGraph := false
	for _, p := range dash.Panels {
		nodeGraph = nodeGraph || p.Type == "nodeGraph" || p.Type == "nodegraph"
		for _, tg := range p.Targets {
			switch {
			case tg.Expr != "":
				expr := vars.Replace(tg.Expr)
				if res := promQuery(t, prom, expr); len(res) == 0 {
					t.Errorf("panel %q: %s returns nothing", p.Title, expr)
				}
			case tg.URL != "":
				u := vars.Replace(tg.URL)
				var rows []map[string]any
				if err := json.Unmarshal(httpGet(t, u), &rows); err != nil || len(rows) == 0 {
					t.Errorf("panel %q, %s: %d rows, %v; want some", p.Title, u, len(rows), err)
				}
				for _, r := range rows {
					for _, c := range tg.Columns {
						if _, ok := r[c.Selector]; !ok {
							t.Errorf("panel %q, %s: a row lacks column %q", p.Title, u, c.Selector)
						}
					}
				}
			default:
				t.Errorf("panel %q, target %s: no query", p.Title, tg.RefID)
			}
		}
	}
	if !nodeGraph {
		t.Error("dashboard has no node graph panel")
	}
}

// checkRules waits for Prometheus to evaluate the rules of deploy/prometheus
// and checks none failed.
func checkRules(t *testing.T, prom string) {
	file, err := os.ReadFile("../../deploy/prometheus/rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	want := len(regexp.MustCompile(`(?m)^\s*- (record|alert):`).FindAll(file, -1))
	eventually(t, 20*time.Second, "every rule evaluated, without error", func() (bool, string) {
		var resp struct {
			Data struct {
				Groups []struct {
					Rules []struct {
						Name, Health, LastError string
						LastEvaluation          time.Time
					}
				}
			}
		}
		if err := json.Unmarshal(httpGet(t, prom+"/api/v1/rules"), &resp); err != nil {
			return false, err.Error()
		}
		n := 0
		for _, g := range resp.Data.Groups {
			for _, r := range g.Rules {
				n++
				if r.Health != "ok" || r.LastEvaluation.Year() < 2000 {
					return false, fmt.Sprintf("rule %s: health %q, last evaluated %s, error %q", r.Name, r.Health, r.LastEvaluation, r.LastError)
				}
			}
		}
		return n == want, fmt.Sprintf("%d rules, want %d (deploy/prometheus/rules.yml)", n, want)
	})
}

func buildGraphBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "flowmap")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func mustAddHost(t *testing.T, sb *sandbox.Net, name string) *sandbox.Host {
	t.Helper()
	h, err := sb.AddHost(name)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// freeAddr returns a loopback address with a port free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startProcess starts a command that runs until the test ends, then is
// stopped by its PID: SIGTERM, SIGKILL after 10s.
func startProcess(t *testing.T, name, path string, args ...string) *bytes.Buffer {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("%s's output:\n%s", name, out.String())
		}
	})
	return &out
}

// checkServe runs `flowmap graph --prometheus --serve` and checks what it
// serves: the live map's page, configured for Prometheus; the cluster's
// graph, with the bytes of edge that the agent's JSON says; the diff.
func checkServe(t *testing.T, bin, prom string, edge topology.Edge) {
	addr := freeAddr(t)
	startProcess(t, "flowmap graph --serve", bin, "graph", "--prometheus", prom, "--serve", addr, "--refresh", "2s")
	base := "http://" + addr
	waitHTTP(t, base+"/", 30*time.Second)
	if page := httpGet(t, base+"/"); !bytes.Contains(page, []byte("<title>flowmap: live map</title>")) {
		t.Errorf("GET / on --serve: %.200q, want the live map's page", page)
	}
	var cfg struct {
		RefreshMS  int    `json:"refresh_ms"`
		Source     string `json:"source"`
		Prometheus string `json:"prometheus"`
	}
	if err := json.Unmarshal(httpGet(t, base+"/config.json"), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.RefreshMS != 2000 || cfg.Source != "prometheus" || cfg.Prometheus != prom {
		t.Errorf("config.json on --serve: %+v, want refresh 2000 ms, source prometheus, prometheus %s", cfg, prom)
	}
	s := getGraph(t, base, "container", "5m")
	e, ok := findEdge(s, edge.ID)
	if !ok || e.Forward.Bytes != edge.Forward.Bytes || e.Reverse.Bytes != edge.Reverse.Bytes || e.Connections != edge.Connections {
		t.Errorf("the graph on --serve: edge %s %+v (%v), want the agent's %d B forward, %d B reverse, %d connections",
			edge.ID, e, ok, edge.Forward.Bytes, edge.Reverse.Bytes, edge.Connections)
	}
	d, err := topology.ReadDiffJSON(bytes.NewReader(httpGet(t, base+"/api/v1/graph/diff?level=container&window=5m&since=10m")))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(d.Edges, func(c topology.EdgeChange) bool {
		return c.ID == edge.ID && slices.Equal(c.Changes, []string{topology.ChangeAdded})
	}) {
		t.Errorf("the diff on --serve since 10m: %+v, want %s added", d.Edges, edge.ID)
	}
}

// startPrometheus starts Prometheus on loopback, scraping the agent every
// second with deploy/prometheus's rules, and returns its base URL.
func startPrometheus(t *testing.T, bin, agentAddr string) string {
	t.Helper()
	dir := t.TempDir()
	rules, err := filepath.Abs("../../deploy/prometheus/rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [%q]
scrape_configs:
  - job_name: flowmap
    static_configs: [{targets: [%q]}]
`, rules, agentAddr)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	startProcess(t, "prometheus", bin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr)
	u := "http://" + addr
	waitHTTP(t, u+"/-/ready", 30*time.Second)
	return u
}

func waitHTTP(t *testing.T, u string, d time.Duration) {
	t.Helper()
	eventually(t, d, u+" answers 200", func() (bool, string) {
		resp, err := http.Get(u)
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
}

// eventually polls ok until it says true, and fails t with its last word
// after d.
func eventually(t *testing.T, d time.Duration, what string, ok func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		done, msg := ok()
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s, want %s: %s", d, what, msg)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func httpGet(t *testing.T, u string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("get %s: %s, %v: %s", u, resp.Status, err, b)
	}
	return b
}

func getGraph(t *testing.T, agentURL, level, window string) *topology.Snapshot {
	t.Helper()
	s, err := topology.ReadJSON(bytes.NewReader(httpGet(t, agentURL+"/api/v1/graph?level="+level+"&window="+window)))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func findEdge(s *topology.Snapshot, id string) (topology.Edge, bool) {
	for _, e := range s.Edges {
		if e.ID == id {
			return e, true
		}
	}
	return topology.Edge{}, false
}

type promSample struct {
	Metric map[string]string
	Value  [2]any
}

// promQuery runs an instant PromQL query.
func promQuery(t *testing.T, prom, expr string) []promSample {
	t.Helper()
	var resp struct {
		Status string
		Data   struct{ Result []promSample }
		Error  string
	}
	if err := json.Unmarshal(httpGet(t, prom+"/api/v1/query?"+url.Values{"query": {expr}}.Encode()), &resp); err != nil {
		t.Fatalf("query %s: %v", expr, err)
	}
	if resp.Status != "success" {
		t.Fatalf("query %s: %s", expr, resp.Error)
	}
	return resp.Data.Result
}

// promScalar runs a query that returns one sample and returns its value.
func promScalar(t *testing.T, prom, expr string) (float64, bool) {
	t.Helper()
	res := promQuery(t, prom, expr)
	if len(res) != 1 {
		return 0, false
	}
	s, _ := res[0].Value[1].(string)
	v, err := strconv.ParseFloat(s, 64)
	return v, err == nil
}
