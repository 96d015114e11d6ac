package server

import (
	"log/slog"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
)

// records returns a batch of n records, every l7th with L7 (none if 0).
func records(start time.Time, n, l7 int) model.Batch {
	b := model.Batch{Start: start, End: start.Add(time.Second), Records: make([]model.Record, n)}
	for i := range b.Records {
		b.Records[i] = model.Record{Src: netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), Dst: netip.MustParseAddr("198.51.100.200"),
			Proto: model.ProtoTCP, SrcPort: uint16(i), DstPort: 80, Forward: model.Direction{Bytes: 1, Packets: 1}}
		if l7 > 0 && i%l7 == 0 {
			b.Records[i].L7 = &model.L7{}
		}
	}
	return b
}

// TestHistoryBound fills the history past its byte bound: the oldest
// batches go, counted, then a batch larger than the bound alone keeps the
// records that fit.
func TestHistoryBound(t *testing.T) {
	s := New(12, nil, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	const limit = 1 << 20
	s.SetMaxBytes(limit)
	t0 := time.Now()
	for i := range 12 {
		s.Add(records(t0.Add(time.Duration(i)*time.Second), 1000, 0))
	}
	u := s.Usage()
	perBatch := 1000 * recordBytes
	fit := uint64(limit / perBatch)
	if u.Bytes > limit || u.Entries != fit*1000 || u.Dropped != (12-fit)*1000 || u.LimitBytes != limit {
		t.Errorf("usage = %+v, want %d records (%d B each) under %d B and %d dropped", u, fit*1000, recordBytes, limit, (12-fit)*1000)
	}
	if doc := s.Flows(12); doc.Intervals != int(fit) {
		t.Errorf("intervals = %d, want %d", doc.Intervals, fit)
	}

	s.Add(records(t0.Add(time.Minute), 5000, 0)) // 1.7 MiB alone
	u = s.Usage()
	keep := uint64(limit / recordBytes)
	if u.Bytes > limit || u.Entries != keep || u.Dropped != (12-fit)*1000+fit*1000+5000-keep {
		t.Errorf("after a batch past the bound: usage = %+v, want %d records and %d dropped", u, keep, (12-fit)*1000+fit*1000+5000-keep)
	}

	// Past keep, batches go uncounted: that is what keep asks for.
	s = New(2, nil, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	for i := range 5 {
		s.Add(records(t0.Add(time.Duration(i)*time.Second), 10, 0))
	}
	if u := s.Usage(); u.Dropped != 0 || u.Entries != 20 {
		t.Errorf("past keep: usage = %+v, want 20 records and none dropped", u)
	}
}

// TestHistoryBytesEstimate checks the estimate of a record's bytes
// against the heap's growth when the server holds them.
func TestHistoryBytesEstimate(t *testing.T) {
	s := New(100, nil, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	s.SetMaxBytes(1 << 30)
	before := testenv.LiveHeap()
	t0 := time.Now()
	for i := range 20 {
		s.Add(records(t0.Add(time.Duration(i)*time.Second), 5000, 10))
	}
	grown := testenv.LiveHeap() - before
	testenv.CheckEstimate(t, "100,000 records, 10% with L7", s.Usage().Bytes, grown, 0.15)
	runtime.KeepAlive(s)
}
