// Package sandboxtest holds what tests add to package sandbox: a sandbox
// closed when the test ends, and servers run in a sandbox's hosts until
// then. It imports testing, so nothing but tests may import it; the
// sandbox itself, which the demo and the bench use, is
// github.com/flowmap/flowmap/sandbox.
package sandboxtest

import (
	"testing"

	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/sandbox"
)

// New returns a new sandbox that is closed when t ends. It fails t if the
// test is not run as root or sandbox.New fails.
func New(t testing.TB, opts sandbox.Options) *sandbox.Net {
	t.Helper()
	testenv.MustBeRoot(t)
	n, err := sandbox.New(opts)
	if err != nil {
		t.Fatalf("create sandbox: %v", err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close sandbox %s: %v", opts.Prefix, err)
		}
	})
	return n
}
