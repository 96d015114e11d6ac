// Package benchcpu reports a benchmark's throughput per CPU second, which
// other processes on a shared machine do not change as they change its
// wall-clock time.
package benchcpu

import (
	"syscall"
	"testing"
	"time"
)

// cpu returns the process's user and system CPU time so far.
func cpu() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Start begins counting; the function it returns reports n items (of
// unit, as "records") per second of the process's CPU time since, the
// benchmark's whole cost on every core: items per core-second.
func Start(b *testing.B, unit string) func(n int) {
	start := cpu()
	return func(n int) {
		if d := cpu() - start; d > 0 {
			b.ReportMetric(float64(n)/d.Seconds(), unit+"/cpu-s")
		}
	}
}
