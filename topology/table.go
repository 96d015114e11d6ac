package topology

import (
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
	"time"
)

// WriteTable writes the snapshot's edges as a text table for a terminal,
// the most bytes first.
func WriteTable(w io.Writer, s *Snapshot) error {
	names := make(map[string]string, len(s.Nodes))
	for _, n := range s.Nodes {
		names[n.ID] = n.Name
		if n.Kind != KindWorkload && n.Kind != KindNamespace {
			names[n.ID] += " (" + string(n.Kind) + ")"
		}
	}
	edges := make([]*Edge, len(s.Edges))
	for i := range s.Edges {
		edges[i] = &s.Edges[i]
	}
	sort.SliceStable(edges, func(i, j int) bool { return edges[i].Bytes() > edges[j].Bytes() })
	secs := s.Window.Seconds()
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "%s level, last %s (%s to %s UTC):\n\n", s.Level, s.Window.Name,
		s.Window.Start.UTC().Format(time.TimeOnly), s.Window.End.UTC().Format(time.TimeOnly))
	fmt.Fprintln(tw, "CLIENT\tSERVER\tPROTO/PORT\tCONNS\tBYTES →\tBYTES ←\tPACKETS\tRATE\tRTT (MEAN)\tRETRANS\tL7\tHEALTH")
	for _, e := range edges {
		rtt, l7 := "-", "-"
		if e.RTT != nil {
			rtt = e.RTT.Mean.Round(time.Microsecond).String()
		}
		if e.L7 != nil {
			l7 = l7Label(e.L7)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s/%d\t%d\t%d\t%d\t%d\t%s\t%s\t%d\t%s\t%s\n", names[e.Source], names[e.Target], e.Protocol, e.Port,
			e.Connections, e.Forward.Bytes, e.Reverse.Bytes, e.Forward.Packets+e.Reverse.Packets,
			Rate(float64(e.Bytes())/secs), rtt, e.Forward.Retransmits+e.Reverse.Retransmits, l7, healthLabel(e.Health))
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write graph table: %w", err)
	}
	return nil
}
