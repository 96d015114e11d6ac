package testenv

import (
	"runtime"
	"testing"
)

// LiveHeap returns the live heap's bytes after a collection.
func LiveHeap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// CheckEstimate fails t unless est, a store's estimate of its bytes, is
// within tol (0.25: 25 %) of grown, the live heap's growth while the store
// filled (LiveHeap after less LiveHeap before).
func CheckEstimate(t testing.TB, what string, est, grown uint64, tol float64) {
	t.Helper()
	r := float64(est) / float64(grown)
	t.Logf("%s: estimated %d B, heap grew %d B (%.2f)", what, est, grown, r)
	if r < 1-tol || r > 1+tol {
		t.Errorf("%s: estimate %d B, heap grew %d B: ratio %.2f, want within %.0f%%", what, est, grown, r, 100*tol)
	}
}
