package topology

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file: %v (run go test ./topology -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (run go test ./topology -update and check the diff):\ngot:\n%s", name, got)
	}
}

func TestGolden(t *testing.T) {
	g := fixture()
	for _, tc := range []struct {
		file   string
		level  Level
		window time.Duration
		write  func(*bytes.Buffer, *Snapshot) error
	}{
		{"container-1m.json", LevelContainer, time.Minute, func(b *bytes.Buffer, s *Snapshot) error { return WriteJSON(b, s) }},
		{"workload-1h.json", LevelWorkload, time.Hour, func(b *bytes.Buffer, s *Snapshot) error { return WriteJSON(b, s) }},
		{"container-1m.dot", LevelContainer, time.Minute, func(b *bytes.Buffer, s *Snapshot) error { return WriteDOT(b, s) }},
		{"workload-1h.dot", LevelWorkload, time.Hour, func(b *bytes.Buffer, s *Snapshot) error { return WriteDOT(b, s) }},
		{"host-5m.dot", LevelHost, 5 * time.Minute, func(b *bytes.Buffer, s *Snapshot) error { return WriteDOT(b, s) }},
		{"workload-5m.nodegraph.json", LevelWorkload, 5 * time.Minute, func(b *bytes.Buffer, s *Snapshot) error { return WriteNodeGraph(b, s) }},
	} {
		t.Run(tc.file, func(t *testing.T) {
			var b bytes.Buffer
			if err := tc.write(&b, g.Snapshot(t0, tc.level, tc.window)); err != nil {
				t.Fatal(err)
			}
			golden(t, tc.file, b.Bytes())
		})
	}
}

// TestJSONSchema checks each level's and window's document against the
// schema, and that it reads back as it was written.
func TestJSONSchema(t *testing.T) {
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(Schema))
	if err != nil {
		t.Fatalf("parse schema: %v", err)
	}
	if err := c.AddResource("schema.json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile("schema.json")
	if err != nil {
		t.Fatalf("compile schema: %v", err)
	}
	g := fixture()
	g.Add(t0, flow(web1, payments, model.ProtoICMP, 8, 84, 84, 0))
	for _, level := range Levels {
		for i, w := range Windows {
			t.Run(string(level)+"-"+windowNames[i], func(t *testing.T) {
				s := g.Snapshot(t0, level, w)
				s.Edges[0].L7 = &L7{Protocol: "http", Requests: 10, Errors: 1, Duration: time.Second}
				var b bytes.Buffer
				if err := WriteJSON(&b, s); err != nil {
					t.Fatal(err)
				}
				v, err := jsonschema.UnmarshalJSON(bytes.NewReader(b.Bytes()))
				if err != nil {
					t.Fatal(err)
				}
				if err := sch.Validate(v); err != nil {
					t.Errorf("document does not match the schema: %v\n%s", err, b.Bytes())
				}
				back, err := ReadJSON(&b)
				if err != nil {
					t.Fatal(err)
				}
				var again bytes.Buffer
				WriteJSON(&again, back)
				var first bytes.Buffer
				WriteJSON(&first, s)
				if !bytes.Equal(first.Bytes(), again.Bytes()) {
					t.Errorf("document read back and written again differs:\n%s\nwant:\n%s", again.Bytes(), first.Bytes())
				}
			})
		}
	}
	// The schema must also reject what is wrong.
	for name, bad := range map[string]string{
		"no version":      `{"level":"host","window":{"name":"1m","start":"2026-11-25T09:00:00Z","end":"2026-11-25T09:00:00Z"},"nodes":[],"edges":[]}`,
		"unknown level":   `{"version":1,"level":"cluster","window":{"name":"1m","start":"2026-11-25T09:00:00Z","end":"2026-11-25T09:00:00Z"},"nodes":[],"edges":[]}`,
		"negative bytes":  `{"version":1,"level":"host","window":{"name":"1m","start":"2026-11-25T09:00:00Z","end":"2026-11-25T09:00:00Z"},"nodes":[],"edges":[{"id":"a","source":"x:a","target":"x:b","protocol":"tcp","port":1,"forward":{"bytes":-1,"packets":0,"retransmits":0},"reverse":{"bytes":0,"packets":0,"retransmits":0},"connections":0,"first_seen":"2026-11-25T09:00:00Z","last_seen":"2026-11-25T09:00:00Z"}]}`,
		"bad time format": `{"version":1,"level":"host","window":{"name":"1m","start":"yesterday","end":"2026-11-25T09:00:00Z"},"nodes":[],"edges":[]}`,
	} {
		v, _ := jsonschema.UnmarshalJSON(strings.NewReader(bad))
		if err := sch.Validate(v); err == nil {
			t.Errorf("schema accepts a document with %s, want it rejected", name)
		}
	}
}

// TestDOTRenders renders each level's DOT with Graphviz's dot and checks
// the SVG holds every node and edge, with a cluster per host and namespace.
func TestDOTRenders(t *testing.T) {
	testenv.MustHaveCommand(t, "dot")
	g := fixture()
	for _, level := range Levels {
		t.Run(string(level), func(t *testing.T) {
			s := g.Snapshot(t0, level, time.Hour)
			var svg bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := Render(ctx, &svg, s, "svg"); err != nil {
				t.Fatal(err)
			}
			// dot's SVG: a <g class="node"> per node and <g class="edge"> per
			// edge, each with a <title>; <g class="cluster"> per cluster.
			var doc struct {
				G struct {
					G []struct {
						Class string `xml:"class,attr"`
						Title string `xml:"title"`
					} `xml:"g"`
				} `xml:"g"`
			}
			if err := xml.Unmarshal(svg.Bytes(), &doc); err != nil {
				t.Fatalf("dot's svg does not parse: %v", err)
			}
			got := map[string]int{}
			titles := map[string]bool{}
			for _, g := range doc.G.G {
				got[g.Class]++
				titles[g.Title] = true
			}
			clusters := map[string]bool{}
			for _, n := range s.Nodes {
				if !titles[n.ID] {
					t.Errorf("svg has no node %q", n.ID)
				}
				if level == LevelHost {
					continue // no clusters: each would hold one node
				}
				if n.Host != "" {
					clusters["host:"+n.Host] = true
				}
				if n.Namespace != "" && n.Kind != KindNamespace {
					clusters["ns:"+n.Host+"/"+n.Namespace] = true
				}
			}
			want := map[string]int{"node": len(s.Nodes), "edge": len(s.Edges), "cluster": len(clusters)}
			for class, n := range want {
				if got[class] != n {
					t.Errorf("svg has %d %s groups, want %d", got[class], class, n)
				}
			}
		})
	}
	t.Run("png", func(t *testing.T) {
		var png bytes.Buffer
		if err := Render(context.Background(), &png, g.Snapshot(t0, LevelWorkload, time.Hour), "png"); err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(png.Bytes(), []byte("\x89PNG\r\n\x1a\n")) {
			t.Errorf("png output starts %q, want the PNG signature", png.Bytes()[:min(8, png.Len())])
		}
	})
}

// The node graph panel's fields, as Grafana documents them
// (panels-visualizations/visualizations/node-graph, "Data API"): name or
// prefix, and the types it may have. id, and source and target of edges,
// are required.
var (
	grafanaNodeFields = map[string][]string{
		"id": {"string"}, "title": {"string"}, "subtitle": {"string"},
		"mainstat": {"string", "number"}, "secondarystat": {"string", "number"},
		"arc__": {"number"}, "detail__": {"string", "number"}, "color": {"string", "number"},
		"icon": {"string"}, "nodeRadius": {"number"}, "highlighted": {"boolean"},
	}
	grafanaEdgeFields = map[string][]string{
		"id": {"string"}, "source": {"string"}, "target": {"string"},
		"mainstat": {"string", "number"}, "secondarystat": {"string", "number"},
		"detail__": {"string", "number"}, "thickness": {"number"}, "highlighted": {"boolean"},
		"color": {"string"}, "strokeDasharray": {"string"},
	}
)

// TestNodeGraphFrames checks the node graph JSON field by field against
// Grafana's documented frame format, and against Fields.
func TestNodeGraphFrames(t *testing.T) {
	g := fixture()
	for _, level := range Levels {
		t.Run(string(level), func(t *testing.T) {
			var b bytes.Buffer
			if err := WriteNodeGraph(&b, g.Snapshot(t0, level, 15*time.Minute)); err != nil {
				t.Fatal(err)
			}
			var doc struct{ Nodes, Edges []map[string]any }
			if err := json.Unmarshal(b.Bytes(), &doc); err != nil {
				t.Fatal(err)
			}
			fields := Fields()
			ids := map[string]bool{}
			for _, n := range doc.Nodes {
				checkRow(t, "node", n, grafanaNodeFields, fields.Nodes, "id")
				id, _ := n["id"].(string)
				if ids[id] {
					t.Errorf("node id %q twice", id)
				}
				ids[id] = true
				var arcs float64
				for k, v := range n {
					if strings.HasPrefix(k, "arc__") {
						f, _ := v.(float64)
						if f < 0 || f > 1 {
							t.Errorf("node %s: %s = %v, want 0 to 1", id, k, v)
						}
						arcs += f
					}
				}
				if math.Abs(arcs-1) > 1e-9 {
					t.Errorf("node %s: arc__ fields add up to %v, want 1", id, arcs)
				}
			}
			edgeIDs := map[string]bool{}
			for _, e := range doc.Edges {
				checkRow(t, "edge", e, grafanaEdgeFields, fields.Edges, "id", "source", "target")
				id, _ := e["id"].(string)
				if edgeIDs[id] {
					t.Errorf("edge id %q twice", id)
				}
				edgeIDs[id] = true
				for _, end := range []string{"source", "target"} {
					if v, _ := e[end].(string); !ids[v] {
						t.Errorf("edge %s: %s %q is no node's id", id, end, v)
					}
				}
				if th, _ := e["thickness"].(float64); th < 1 || th > 6 {
					t.Errorf("edge %s: thickness %v, want 1 to 6", id, th)
				}
			}
			if len(doc.Nodes) == 0 || len(doc.Edges) == 0 {
				t.Errorf("%d nodes and %d edges, want some", len(doc.Nodes), len(doc.Edges))
			}
		})
	}
}

// checkRow checks one row's fields: each is documented by Grafana with
// its type, listed in Fields with the same type, and required ones are set.
func checkRow(t *testing.T, what string, row map[string]any, documented map[string][]string, listed []Field, required ...string) {
	t.Helper()
	for _, r := range required {
		if s, _ := row[r].(string); s == "" {
			t.Errorf("%s %v: required field %q is missing or empty", what, row["id"], r)
		}
	}
	if len(row) != len(listed) {
		t.Errorf("%s %v has %d fields, Fields lists %d", what, row["id"], len(row), len(listed))
	}
	for k, v := range row {
		typ := jsonType(v)
		name := k
		if i := strings.Index(k, "__"); i > 0 {
			name = k[:i+2]
		}
		types, ok := documented[name]
		if !ok {
			t.Errorf("%s field %q: Grafana documents no such field", what, k)
			continue
		}
		if !contains(types, typ) {
			t.Errorf("%s field %q is a %s, Grafana wants %v", what, k, typ, types)
		}
		var l *Field
		for i := range listed {
			if listed[i].Name == k {
				l = &listed[i]
			}
		}
		if l == nil || l.Type != typ {
			t.Errorf("%s field %q (%s) is not in Fields with its type: %+v", what, k, typ, l)
		}
	}
}

func jsonType(v any) string {
	switch v.(type) {
	case string:
		return "string"
	case float64:
		return "number"
	case bool:
		return "boolean"
	}
	return fmt.Sprintf("%T", v)
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestMetrics compares the flow series of the fixed graph's flows with a
// golden /metrics, and checks it with promtool.
func TestMetrics(t *testing.T) {
	promtool := testenv.MustHaveCommand(t, "promtool")
	m := NewMetrics(MetricsOptions{MaxEdges: 6, Node: "n1"})
	for _, b := range fixtureFlows() {
		m.Add(b.at, b.flows...)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m, NewGraphCollector(fixture()))
	// New series are first collected at zero.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n, sum := 0, 0.0
	for _, mf := range mfs {
		if mf.GetName() == "flowmap_flow_bytes_total" {
			for _, m := range mf.Metric {
				n++
				sum += m.Counter.GetValue()
			}
		}
	}
	if n != 14 || sum != 0 {
		t.Errorf("first gather: %d byte series with %v bytes in all, want 14 with 0", n, sum)
	}
	path := filepath.Join("testdata", "metrics.prom")
	if *update {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		for _, mf := range mfs {
			expfmt.MetricFamilyToText(&b, mf)
		}
		os.WriteFile(path, b.Bytes(), 0o644)
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := testutil.GatherAndCompare(reg, bytes.NewReader(want)); err != nil {
		t.Errorf("/metrics differs from %s (run go test ./topology -update and check the diff): %v", path, err)
	}
	check := exec.Command(promtool, "check", "metrics")
	check.Stdin = bytes.NewReader(want)
	if out, err := check.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics %s: %v\n%s", path, err, out)
	}
}

func TestTable(t *testing.T) {
	var b bytes.Buffer
	if err := WriteTable(&b, fixture().Snapshot(t0, LevelWorkload, time.Hour)); err != nil {
		t.Fatal(err)
	}
	golden(t, "workload-1h.txt", b.Bytes())
}
