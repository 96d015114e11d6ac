package export

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowmap/flowmap/model"
)

// fakeExporter hands each batch to the test on calls and returns what the
// test sends on errs.
type fakeExporter struct {
	calls  chan Batch
	errs   chan error
	closed chan struct{}
}

func newFake() *fakeExporter {
	return &fakeExporter{calls: make(chan Batch), errs: make(chan error), closed: make(chan struct{})}
}

func (f *fakeExporter) Export(ctx context.Context, b Batch) error {
	select {
	case f.calls <- b:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-f.errs:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (f *fakeExporter) Close(context.Context) error { close(f.closed); return nil }

// flowsN returns n flows with source ports from port on.
func flowsN(port, n int) []model.Flow {
	fs := make([]model.Flow, n)
	for i := range fs {
		fs[i].Src = netip.MustParseAddr("192.0.2.1")
		fs[i].Dst = netip.MustParseAddr("192.0.2.2")
		fs[i].Proto = model.ProtoTCP
		fs[i].SrcPort = uint16(port + i)
		fs[i].DstPort = 80
	}
	return fs
}

func count(t *testing.T, q *Queue, result string) int {
	t.Helper()
	return int(testutil.ToFloat64(q.records.WithLabelValues(result)))
}

// run starts q and returns a function that stops it and waits for Run.
func run(t *testing.T, q *Queue) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { q.Run(ctx); close(done) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

func ports(fs []model.Flow) []uint16 {
	out := make([]uint16, len(fs))
	for i := range fs {
		out[i] = fs[i].SrcPort
	}
	return out
}

// TestQueueFullDropsNewest: a collector that is slow holds the queue full;
// Offer does not wait, drops the newest, and what the queue held is sent
// in order when the collector answers.
func TestQueueFullDropsNewest(t *testing.T) {
	f := newFake()
	q := NewQueue(f, Options{Name: "test", Capacity: 10, BatchSize: 4})
	run(t, q)
	q.Offer(flowsN(1000, 4))
	first := <-f.calls // being sent, still held
	q.Offer(flowsN(2000, 5))
	q.Offer(flowsN(3000, 5)) // 1 fits
	if got := q.Len(); got != 10 {
		t.Errorf("Len() = %d, want the capacity, 10", got)
	}
	if got := count(t, q, ResultQueueFull); got != 4 {
		t.Errorf("dropped_queue_full = %d, want 4", got)
	}
	var got []uint16
	got = append(got, ports(first.Flows)...)
	f.errs <- nil
	for len(got) < 10 {
		b := <-f.calls
		got = append(got, ports(b.Flows)...)
		f.errs <- nil
	}
	want := []uint16{1000, 1001, 1002, 1003, 2000, 2001, 2002, 2003, 2004, 3000}
	if !slices.Equal(got, want) {
		t.Errorf("sent source ports %v, want %v", got, want)
	}
}

// TestQueueRetries: a collector that is down, then back, receives the
// batch it refused, after retries; a permanent error fails the batch.
func TestQueueRetries(t *testing.T) {
	f := newFake()
	q := NewQueue(f, Options{Name: "test", RetryInitial: time.Millisecond, RetryMax: 4 * time.Millisecond})
	run(t, q)
	q.Offer(flowsN(1000, 3))
	for range 5 {
		<-f.calls
		f.errs <- errors.New("connection refused")
	}
	b := <-f.calls
	f.errs <- nil
	if got := ports(b.Flows); !slices.Equal(got, []uint16{1000, 1001, 1002}) {
		t.Errorf("batch after retries = %v, want 1000-1002", got)
	}
	q.Offer(flowsN(2000, 2))
	<-f.calls
	f.errs <- Permanent(errors.New("bad request"))
	q.Offer(flowsN(3000, 1))
	<-f.calls
	f.errs <- nil
	// The queue counts a batch before it asks for the next.
	q.Offer(flowsN(4000, 1))
	<-f.calls
	defer func() { f.errs <- nil }()
	for _, c := range []struct {
		result string
		want   int
	}{{ResultSent, 4}, {ResultFailed, 2}, {ResultQueueFull, 0}} {
		if got := count(t, q, c.result); got != c.want {
			t.Errorf("records_total{result=%q} = %d, want %d", c.result, got, c.want)
		}
	}
	if got := testutil.ToFloat64(q.retries); got != 5 {
		t.Errorf("retries = %v, want 5", got)
	}
	if got := q.Len(); got != 1 {
		t.Errorf("Len() = %d, want 1, the batch being sent", got)
	}
}

// TestQueuePartlySent: a batch the collector took but for some records is
// not sent again; its rejected records count as failed, the rest as sent.
func TestQueuePartlySent(t *testing.T) {
	f := newFake()
	q := NewQueue(f, Options{Name: "test", RetryInitial: time.Millisecond})
	run(t, q)
	q.Offer(flowsN(1000, 5))
	<-f.calls
	f.errs <- PartlySent(2, errors.New("2 records too old"))
	q.Offer(flowsN(2000, 1))
	if b := <-f.calls; !slices.Equal(ports(b.Flows), []uint16{2000}) {
		t.Errorf("batch after a partial success = %v, want the next, 2000; not the same again", ports(b.Flows))
	}
	defer func() { f.errs <- nil }()
	for _, c := range []struct {
		result string
		want   int
	}{{ResultSent, 3}, {ResultFailed, 2}} {
		if got := count(t, q, c.result); got != c.want {
			t.Errorf("records_total{result=%q} = %d, want %d", c.result, got, c.want)
		}
	}
	if got := testutil.ToFloat64(q.retries); got != 0 {
		t.Errorf("retries = %v, want 0", got)
	}
}

// TestQueueShutdown: on stop the queue sends what it holds for
// FlushTimeout, counts the rest as dropped_shutdown and closes the
// exporter.
func TestQueueShutdown(t *testing.T) {
	f := newFake()
	q := NewQueue(f, Options{Name: "test", BatchSize: 2, FlushTimeout: 50 * time.Millisecond})
	stop := run(t, q)
	q.Offer(flowsN(1000, 5))
	<-f.calls
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	// The batch in flight is cut by the stop and tried again in the flush.
	<-f.calls
	f.errs <- nil
	<-f.calls // the second batch: never answered, the flush times out
	<-stopped
	<-f.closed
	if got, want := count(t, q, ResultSent), 2; got != want {
		t.Errorf("sent = %d, want %d", got, want)
	}
	if got, want := count(t, q, ResultShutdown), 3; got != want {
		t.Errorf("dropped_shutdown = %d, want %d", got, want)
	}
}

func TestQueueMetrics(t *testing.T) {
	q := NewQueue(newFake(), Options{Name: "ipfix", Capacity: 7})
	const want = `
# HELP flowmap_export_queue_capacity_records The records the export queue holds at most.
# TYPE flowmap_export_queue_capacity_records gauge
flowmap_export_queue_capacity_records{exporter="ipfix"} 7
`
	if err := testutil.CollectAndCompare(q, strings.NewReader(want), "flowmap_export_queue_capacity_records"); err != nil {
		t.Error(err)
	}
	if n, err := testutil.CollectAndLint(q); err != nil || len(n) > 0 {
		t.Errorf("lint: %v %v", n, err)
	}
}

// TestQueueBytes: the byte bound caps the capacity, and what it refuses
// is counted.
func TestQueueBytes(t *testing.T) {
	q := NewQueue(newFake(), Options{Name: "otlp", Capacity: 100, MaxBytes: 10 * FlowBytes})
	q.Offer(make([]model.Flow, 25))
	u := q.Usage()
	if u.Entries != 10 || u.Bytes != 10*uint64(FlowBytes) || u.LimitBytes != 10*uint64(FlowBytes) || u.Dropped != 15 {
		t.Errorf("usage %+v, want 10 records of %d B held and 15 dropped", u, FlowBytes)
	}
	if got := count(t, q, ResultQueueFull); got != 15 {
		t.Errorf("dropped_queue_full = %d, want 15", got)
	}
}
