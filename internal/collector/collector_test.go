package collector

import "testing"

// TestStopRightAfterReady stops the collector as soon as it says it is
// ready, as TestL7MetricsCollector does: it must shut down gracefully
// (exit status 0, its files flushed) every time. The collector subscribed
// to SIGTERM only after its "Everything is ready" line, and a SIGTERM in
// between killed it ("signal: terminated"): under load, once in a few
// suite runs.
func TestStopRightAfterReady(t *testing.T) {
	for range 10 {
		c := Start(t)
		c.Stop(t)
	}
}
