package topology

import (
	"testing"
	"time"

	"github.com/flowmap/flowmap/model"
)

// TestMetricsEndsOutsideLock checks that Metrics.Add asks the reporting
// rule before it takes its lock: the rule may look at the host, and a
// scrape must not wait for that.
func TestMetricsEndsOutsideLock(t *testing.T) {
	var m *Metrics
	calls := 0
	m = NewMetrics(MetricsOptions{Level: LevelContainer, Node: "n1", Ends: func(*model.Flow) Ends {
		calls++
		if !m.mu.TryLock() {
			t.Error("Ends called with the metrics lock held, want it called outside")
		} else {
			m.mu.Unlock()
		}
		return Ends{ClientHere: true}
	}})
	fs := make([]model.Flow, 100) // past the stack buffer of 64
	m.Add(time.Unix(1000, 0), fs...)
	if calls != len(fs) {
		t.Errorf("Ends called %d times, want %d", calls, len(fs))
	}
}
