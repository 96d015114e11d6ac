package dockertest

import (
	"os/exec"
	"testing"

	"github.com/flowmap/flowmap/internal/testenv"
)

// startT starts a runtime with start, and closes it when t ends. It fails
// t if the test is not run as root, a program in need is missing (the
// Debian packages pkgs have them all), or start fails.
func startT[R interface{ Close() error }](t testing.TB, name, pkgs string, need []string, start func() (R, error)) R {
	t.Helper()
	testenv.MustBeRoot(t)
	for _, cmd := range need {
		if _, err := exec.LookPath(cmd); err != nil {
			t.Fatalf("test needs %s: %v (on Debian: apt-get install %s)", cmd, err, pkgs)
		}
	}
	r, err := start()
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("stop %s: %v", name, err)
		}
	})
	return r
}
