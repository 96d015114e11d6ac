package topology

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os/exec"
	"sort"
	"strings"
	"time"

	"github.com/flowmap/flowmap/model"
)

// WriteDOT writes the snapshot as a Graphviz digraph: one cluster per host
// and, inside it, per namespace (none at the host level, where each would
// hold one node); edges as wide as the log of their bytes, labelled with
// protocol, port and rate.
func WriteDOT(w io.Writer, s *Snapshot) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "// flowmap graph v%d: %s level, last %s, %s to %s.\n", s.Version, s.Level, s.Window.Name,
		s.Window.Start.Format(time.RFC3339), s.Window.End.Format(time.RFC3339))
	b.WriteString("digraph flowmap {\n")
	fmt.Fprintf(&b, "\tgraph [label=%s, labelloc=t, rankdir=LR, fontname=\"Helvetica\", fontsize=12, nodesep=0.3, ranksep=0.9];\n",
		quote(fmt.Sprintf("flowmap: %s level, last %s, to %s", s.Level, s.Window.Name, s.Window.End.Format(time.DateTime+" MST"))))
	b.WriteString("\tnode [shape=box, style=\"rounded,filled\", fillcolor=\"#e8f0fb\", color=\"#4a6fa5\", fontname=\"Helvetica\", fontsize=10];\n")
	b.WriteString("\tedge [color=\"#4a6fa5\", fontname=\"Helvetica\", fontsize=9, arrowsize=0.7];\n")

	// Hosts, then namespaces in each, in order; "" is outside any.
	groups := map[string]map[string][]*Node{}
	for i := range s.Nodes {
		n := &s.Nodes[i]
		host, ns := n.Host, n.Namespace
		if s.Level == LevelHost {
			host, ns = "", ""
		}
		if n.Kind == KindNamespace {
			ns = ""
		}
		if groups[host] == nil {
			groups[host] = map[string][]*Node{}
		}
		groups[host][ns] = append(groups[host][ns], n)
	}
	for _, host := range sortedKeys(groups) {
		indent := "\t"
		if host != "" {
			fmt.Fprintf(&b, "\tsubgraph %s {\n\t\tlabel=%s; style=\"rounded\"; color=\"#9aa5b1\";\n", quote("cluster_host:"+host), quote("host "+host))
			indent = "\t\t"
		}
		for _, ns := range sortedKeys(groups[host]) {
			in := indent
			if ns != "" {
				fmt.Fprintf(&b, "%ssubgraph %s {\n%s\tlabel=%s; style=\"rounded,dashed\"; color=\"#9aa5b1\";\n",
					indent, quote("cluster_ns:"+host+"/"+ns), indent, quote("namespace "+ns))
				in = indent + "\t"
			}
			for _, n := range groups[host][ns] {
				fmt.Fprintf(&b, "%s%s [label=%s%s];\n", in, quote(n.ID), quote(n.Name+"\n"+string(n.Kind)), nodeStyle(n))
			}
			if ns != "" {
				fmt.Fprintf(&b, "%s}\n", indent)
			}
		}
		if host != "" {
			b.WriteString("\t}\n")
		}
	}

	var most uint64
	for i := range s.Edges {
		most = max(most, s.Edges[i].Bytes())
	}
	secs := s.Window.Seconds()
	for i := range s.Edges {
		e := &s.Edges[i]
		width := 1.0
		if most > 0 {
			width += 5 * math.Log1p(float64(e.Bytes())) / math.Log1p(float64(most))
		}
		label := fmt.Sprintf("%s/%d\n%s", e.Protocol, e.Port, Rate(float64(e.Bytes())/secs))
		tip := fmt.Sprintf("%s → %s %s/%d: %d B → %d B ←, %d packets, %d connections", e.Source, e.Target, e.Protocol, e.Port,
			e.Forward.Bytes, e.Reverse.Bytes, e.Forward.Packets+e.Reverse.Packets, e.Connections)
		if e.RTT != nil {
			tip += fmt.Sprintf(", handshake RTT %s mean", e.RTT.Mean.Round(time.Microsecond))
		}
		color := ""
		if l := e.L7; l != nil {
			label += "\n" + l7Label(l)
			tip += ", " + l7Tip(l)
			if c := successColor(l); c != "" {
				color = ", color=" + quote(c)
			}
		}
		// A failing edge is red, dashed where connections time out, and
		// labelled with its failures, the dominant first.
		if h := e.Health; h.Failing() {
			label += "\n" + healthLabel(h)
			tip += ", " + healthLabel(h)
			color = `, color="#c0392b", fontcolor="#c0392b"`
			if h.Failure == "timeout" || h.TimedOut > 0 {
				color += `, style=dashed`
			}
		}
		fmt.Fprintf(&b, "\t%s -> %s [label=%s, penwidth=%.2f, tooltip=%s%s];\n", quote(e.Source), quote(e.Target), quote(label), width, quote(tip), color)
	}
	b.WriteString("}\n")
	if _, err := w.Write(b.Bytes()); err != nil {
		return fmt.Errorf("write graph dot: %w", err)
	}
	return nil
}

func nodeStyle(n *Node) string {
	switch n.Kind {
	case model.KindExternal:
		return `, shape=ellipse, fillcolor="#fdebd3", color="#c07a26"`
	case model.KindUnknown, KindOverflow:
		return `, shape=ellipse, fillcolor="#eeeeee", color="#888888"`
	case model.KindHost:
		return `, shape=box3d, fillcolor="#e4f4e4", color="#4f8a4f"`
	}
	return ""
}

// quote makes s a DOT string: quotes and backslashes escaped, a newline a
// centred line break.
func quote(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `"`, `\"`)
	s = strings.ReplaceAll(s, "\n", `\n`)
	return `"` + s + `"`
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Rate formats bytes per second with SI prefixes: "12.3 kB/s".
func Rate(bps float64) string {
	const units = "kMGTP"
	switch {
	case bps < 10:
		return fmt.Sprintf("%.1f B/s", bps)
	case bps < 1000:
		return fmt.Sprintf("%.0f B/s", bps)
	}
	i := -1
	for bps >= 1000 && i < len(units)-1 {
		bps /= 1000
		i++
	}
	return fmt.Sprintf("%.1f %cB/s", bps, units[i])
}

// ErrNoGraphviz is returned by Render when Graphviz's dot command is not
// installed (Debian: apt-get install graphviz).
var ErrNoGraphviz = errors.New("graphviz dot command not found (Debian: apt-get install graphviz)")

// Render writes the snapshot in format: "dot", or one that Graphviz's dot
// command renders ("svg", "png", "pdf"), run with the snapshot's DOT on its
// input. Returns an error wrapping ErrNoGraphviz if dot is not installed.
func Render(ctx context.Context, w io.Writer, s *Snapshot, format string) error {
	if format == "dot" {
		return WriteDOT(w, s)
	}
	dot, err := exec.LookPath("dot")
	if err != nil {
		return fmt.Errorf("render graph as %s: %w", format, ErrNoGraphviz)
	}
	var in, out, stderr bytes.Buffer
	if err := WriteDOT(&in, s); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, dot, "-T"+format)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = &in, &out, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("render graph as %s with %s: %w: %s", format, dot, err, strings.TrimSpace(stderr.String()))
	}
	if _, err := w.Write(out.Bytes()); err != nil {
		return fmt.Errorf("write graph %s: %w", format, err)
	}
	return nil
}
