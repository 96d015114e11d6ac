package testenv

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// recorder is a testing.TB that records Fatal instead of ending the test.
type recorder struct {
	testing.TB
	fatal string
}

func (r *recorder) Helper() {}

func (r *recorder) Fatal(args ...any) { r.fatal = fmt.Sprint(args...) }

func (r *recorder) Fatalf(format string, args ...any) { r.fatal = fmt.Sprintf(format, args...) }

func TestMustHaveCommand(t *testing.T) {
	tests := []struct {
		name      string
		command   string
		wantFatal []string // substrings of the message; nil: no failure
	}{
		{name: "present", command: "sh"},
		{name: "missing known", command: "flowmap-no-such-command", wantFatal: []string{`"flowmap-no-such-command"`, "install the package"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &recorder{TB: t}
			path := MustHaveCommand(r, tt.command)
			if tt.wantFatal == nil {
				if r.fatal != "" {
					t.Fatalf("MustHaveCommand(%q) failed the test: %s", tt.command, r.fatal)
				}
				if path == "" {
					t.Fatalf("MustHaveCommand(%q) = %q, want a path", tt.command, path)
				}
				return
			}
			for _, want := range tt.wantFatal {
				if !strings.Contains(r.fatal, want) {
					t.Errorf("MustHaveCommand(%q) message = %q, want it to contain %q", tt.command, r.fatal, want)
				}
			}
		})
	}
}

func TestMustHaveCommandHint(t *testing.T) {
	// A known command that is missing names its Debian package; fake the
	// lookup by emptying $PATH.
	t.Setenv("PATH", "")
	r := &recorder{TB: t}
	MustHaveCommand(r, "iperf3")
	if want := "apt-get install iperf3"; !strings.Contains(r.fatal, want) {
		t.Fatalf("MustHaveCommand(%q) with empty $PATH: message = %q, want it to contain %q", "iperf3", r.fatal, want)
	}
}

func TestMustBeRoot(t *testing.T) {
	r := &recorder{TB: t}
	MustBeRoot(r)
	want := ""
	if os.Geteuid() != 0 {
		want = "test needs root: run as root (uid 0)"
	}
	if r.fatal != want {
		t.Fatalf("MustBeRoot as uid %d: message = %q, want %q", os.Geteuid(), r.fatal, want)
	}
}

func TestMustHaveBTF(t *testing.T) {
	r := &recorder{TB: t}
	MustHaveBTF(r)
	_, err := os.Stat(BTFPath)
	if got, want := r.fatal != "", err != nil; got != want {
		t.Fatalf("MustHaveBTF failed = %v (%q), want %v (stat %s: %v)", got, r.fatal, want, BTFPath, err)
	}
}
