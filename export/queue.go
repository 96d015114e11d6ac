package export

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowmap/flowmap/model"
)

// Exporter sends batches of flows to a collector.
type Exporter interface {
	// Export sends b. An error wrapped by Permanent fails the batch for
	// good, one made by PartlySent fails some of its records for good and
	// counts the rest as sent; any other is retried with backoff, the whole
	// batch again, so a collector that took a batch but whose answer was
	// lost receives its records twice.
	Export(ctx context.Context, b Batch) error
	// Close flushes and releases what the exporter holds.
	Close(ctx context.Context) error
}

// Batch is what a Queue hands its Exporter: at most Options.BatchSize
// flows.
type Batch struct {
	Flows []model.Flow
	// SampleRate is N of the filter's 1-in-N sampling that the flows
	// passed: 1 without sampling.
	SampleRate uint32
}

// permanent marks an error not worth retrying.
type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }

// Permanent wraps err so that a Queue drops the batch that caused it,
// counted as failed, instead of retrying it.
func Permanent(err error) error { return permanent{err} }

// partlySent is a batch the collector took but for some records.
type partlySent struct {
	rejected int
	err      error
}

func (p partlySent) Error() string { return p.err.Error() }
func (p partlySent) Unwrap() error { return p.err }

// PartlySent wraps err, a collector's answer that it took a batch but
// refused rejected of its records for good (OTLP's partial success, which
// the client must not retry): a Queue counts the rejected records as
// failed and the rest as sent, and sends nothing of the batch again.
func PartlySent(rejected int, err error) error { return partlySent{rejected, err} }

// Results of flowmap_export_records_total.
const (
	ResultSent          = "sent"
	ResultFailed        = "failed"
	ResultQueueFull     = "dropped_queue_full"
	ResultShutdown      = "dropped_shutdown"
	ResultFiltered      = "filtered"
	ResultSampledOut    = "sampled_out"
	defaultCapacity     = 65536
	defaultMaxBytes     = 16 << 20
	defaultBatchSize    = 1024
	defaultRetryInitial = 100 * time.Millisecond
	defaultRetryMax     = 30 * time.Second
	defaultFlushTimeout = 5 * time.Second
)

// Options configures a Queue. Zero values take the defaults.
type Options struct {
	// Name is the exporter's name, the label exporter of the queue's
	// metrics: "otlp", "ipfix".
	Name string
	// Capacity is the records the queue holds, those being sent included;
	// the default is 65536. Offer drops the newest records past it.
	Capacity int
	// MaxBytes bounds the queue's estimated memory (Usage): the capacity
	// is at most MaxBytes / FlowBytes records. The default is 16 MiB,
	// 17,189 records.
	MaxBytes int
	// BatchSize is the most records handed to Export at once; the default
	// is 1024.
	BatchSize int
	// RetryInitial and RetryMax bound the backoff between tries of a
	// batch, doubling from RetryInitial; defaults 100ms and 30s.
	RetryInitial, RetryMax time.Duration
	// FlushTimeout is how long Run goes on sending what the queue holds
	// once its context is done; the default is 5s.
	FlushTimeout time.Duration
	Filter       Filter
	Logger       *slog.Logger
}

// Queue holds flows between the agent's drain and an Exporter, bounded in
// records. When full it drops the newest records (those offered), not the
// oldest: what it holds stays until sent, so a collector that comes back
// receives everything the queue held, in order. Its methods are safe for
// concurrent use; it is a prometheus.Collector of its counts.
type Queue struct {
	exp  Exporter
	opts Options
	log  *slog.Logger

	mu     sync.Mutex
	chunks [][]model.Flow
	held   int           // records in chunks and being sent
	full   atomic.Uint64 // records dropped for the capacity
	wake   chan struct{}

	records  *prometheus.CounterVec
	retries  prometheus.Counter
	duration prometheus.Histogram
	size     prometheus.GaugeFunc
	capacity prometheus.Gauge
}

// NewQueue returns a queue in front of exp; Run sends what it holds.
func NewQueue(exp Exporter, opts Options) *Queue {
	if opts.Capacity <= 0 {
		opts.Capacity = defaultCapacity
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = defaultMaxBytes
	}
	opts.Capacity = max(min(opts.Capacity, opts.MaxBytes/FlowBytes), 1)
	if opts.BatchSize <= 0 {
		opts.BatchSize = defaultBatchSize
	}
	if opts.RetryInitial <= 0 {
		opts.RetryInitial = defaultRetryInitial
	}
	if opts.RetryMax <= 0 {
		opts.RetryMax = defaultRetryMax
	}
	if opts.FlushTimeout <= 0 {
		opts.FlushTimeout = defaultFlushTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	q := &Queue{exp: exp, opts: opts, log: opts.Logger, wake: make(chan struct{}, 1)}
	cl := prometheus.Labels{"exporter": opts.Name}
	q.records = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flowmap_export_records_total", ConstLabels: cl,
		Help: "Flow records offered to the exporter, by result: sent, failed (the collector refused them for good), dropped_queue_full, dropped_shutdown (still queued when the agent stopped), filtered, sampled_out."},
		[]string{"result"})
	for _, r := range []string{ResultSent, ResultFailed, ResultQueueFull, ResultShutdown, ResultFiltered, ResultSampledOut} {
		q.records.WithLabelValues(r)
	}
	q.retries = prometheus.NewCounter(prometheus.CounterOpts{Name: "flowmap_export_retries_total", ConstLabels: cl,
		Help: "Batches tried again after an error."})
	q.duration = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "flowmap_export_duration_seconds", ConstLabels: cl,
		Help:    "Time the exporter took to encode and send one batch, each try.",
		Buckets: prometheus.ExponentialBuckets(100e-6, 4, 10)})
	q.size = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flowmap_export_queue_records", ConstLabels: cl,
		Help: "Records in the export queue, those being sent included."}, func() float64 { return float64(q.Len()) })
	q.capacity = prometheus.NewGauge(prometheus.GaugeOpts{Name: "flowmap_export_queue_capacity_records", ConstLabels: cl,
		Help: "The records the export queue holds at most."})
	q.capacity.Set(float64(opts.Capacity))
	return q
}

// Offer queues the flows fs that pass the filter, as many as fit. It never
// blocks, and keeps no reference to fs.
func (q *Queue) Offer(fs []model.Flow) {
	kept := make([]model.Flow, 0, len(fs))
	var filtered, sampled int
	for i := range fs {
		switch ok, why := q.opts.Filter.keep(&fs[i]); {
		case ok:
			kept = append(kept, fs[i])
		case why == ResultSampledOut:
			sampled++
		default:
			filtered++
		}
	}
	q.records.WithLabelValues(ResultFiltered).Add(float64(filtered))
	q.records.WithLabelValues(ResultSampledOut).Add(float64(sampled))
	if len(kept) == 0 {
		return
	}
	q.mu.Lock()
	room := q.opts.Capacity - q.held
	if room < len(kept) {
		q.records.WithLabelValues(ResultQueueFull).Add(float64(len(kept) - max(room, 0)))
		q.full.Add(uint64(len(kept) - max(room, 0)))
		kept = kept[:max(room, 0)]
	}
	if len(kept) > 0 {
		q.chunks = append(q.chunks, kept)
		q.held += len(kept)
	}
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// FlowBytes is a queued record's size, as Go lays it out (the chunks'
// arrays hold model.Flow by value). The L7 and Health a record points to
// are the batch's, which the API's history counts while it keeps it; the
// endpoints' strings are the inventory's.
const FlowBytes = int(unsafe.Sizeof(model.Flow{}))

// Usage is the queue's estimated memory and its bound: entries are
// records, and Dropped those the bound refused (dropped_queue_full).
func (q *Queue) Usage() model.StoreUsage {
	n := uint64(q.Len())
	return model.StoreUsage{Entries: n, Bytes: n * uint64(FlowBytes), LimitBytes: uint64(q.opts.Capacity * FlowBytes),
		Dropped: q.full.Load()}
}

// Name is the exporter's name (Options.Name).
func (q *Queue) Name() string { return q.opts.Name }

// Len returns the records the queue holds, those being sent included.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.held
}

// next returns up to BatchSize records from the front, which stay counted
// in held until done.
func (q *Queue) next() []model.Flow {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []model.Flow
	for len(q.chunks) > 0 && len(out) < q.opts.BatchSize {
		c := q.chunks[0]
		n := min(len(c), q.opts.BatchSize-len(out))
		if out == nil && n == len(c) {
			out = c
		} else {
			out = append(out, c[:n]...)
		}
		if n == len(c) {
			q.chunks[0] = nil
			q.chunks = q.chunks[1:]
		} else {
			q.chunks[0] = c[n:]
		}
	}
	return out
}

// done counts n records sent or failed, and then no longer holds them: a
// queue whose Len is 0 has counted all it held.
func (q *Queue) done(n int, result string) {
	q.records.WithLabelValues(result).Add(float64(n))
	q.mu.Lock()
	q.held -= n
	q.mu.Unlock()
}

// Run sends what the queue holds until ctx is done, then for at most
// FlushTimeout sends what it still holds, counts the rest as dropped and
// closes the exporter. It returns nil.
func (q *Queue) Run(ctx context.Context) error {
	q.send(ctx)
	flush, cancel := context.WithTimeout(context.WithoutCancel(ctx), q.opts.FlushTimeout)
	defer cancel()
	for {
		b := q.next()
		if len(b) == 0 || flush.Err() != nil {
			if len(b) > 0 {
				q.done(len(b), ResultShutdown)
			}
			break
		}
		q.sendBatch(flush, b)
	}
	q.mu.Lock()
	left := q.held
	q.chunks, q.held = nil, 0
	q.mu.Unlock()
	q.records.WithLabelValues(ResultShutdown).Add(float64(left))
	if err := q.exp.Close(flush); err != nil {
		q.log.Warn("close exporter", "err", err)
	}
	return nil
}

func (q *Queue) send(ctx context.Context) {
	for {
		for b := q.next(); len(b) > 0; b = q.next() {
			if !q.sendBatch(ctx, b) {
				q.mu.Lock()
				q.chunks = append([][]model.Flow{b}, q.chunks...) // back to the front for the flush
				q.mu.Unlock()
				return
			}
		}
		select {
		case <-q.wake:
		case <-ctx.Done():
			return
		}
	}
}

// sendBatch sends b, trying again with backoff until it is sent, fails for
// good, or ctx is done; it returns false in the last case, with b still
// held.
func (q *Queue) sendBatch(ctx context.Context, b []model.Flow) bool {
	wait := q.opts.RetryInitial
	for tries := 0; ; tries++ {
		start := time.Now()
		err := q.exp.Export(ctx, Batch{Flows: b, SampleRate: q.opts.Filter.SampleRate()})
		q.duration.Observe(time.Since(start).Seconds())
		var partly partlySent
		switch {
		case err == nil:
			q.done(len(b), ResultSent)
			return true
		case errors.As(err, &partly):
			rejected := min(max(partly.rejected, 0), len(b))
			q.log.Warn("collector refused some records", "records", len(b), "rejected", rejected, "err", err)
			q.done(len(b)-rejected, ResultSent)
			q.done(rejected, ResultFailed)
			return true
		case errors.As(err, new(permanent)):
			q.log.Warn("export failed for good", "records", len(b), "err", err)
			q.done(len(b), ResultFailed)
			return true
		case ctx.Err() != nil:
			return false
		}
		if tries == 0 {
			q.log.Warn("export failed, retrying", "records", len(b), "err", err)
		}
		q.retries.Inc()
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return false
		}
		wait = min(2*wait, q.opts.RetryMax)
	}
}

// Describe implements prometheus.Collector.
func (q *Queue) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range q.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (q *Queue) Collect(ch chan<- prometheus.Metric) {
	for _, c := range q.collectors() {
		c.Collect(ch)
	}
}

func (q *Queue) collectors() []prometheus.Collector {
	return []prometheus.Collector{q.records, q.retries, q.duration, q.size, q.capacity}
}
