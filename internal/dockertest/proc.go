package dockertest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flowmap/flowmap/internal/testenv"
)

// proc is a runtime's daemon process (dockerd, containerd, the Podman
// service): started in a process group of its own, its output in a log
// file, its exit watched.
type proc struct {
	name string // for errors: "dockerd"
	log  string // the log file
	cmd  *exec.Cmd
	done chan struct{}
	err  error // the exit, once done is closed
}

// startProc starts cmd as the daemon name, its output going to the file
// logPath.
func startProc(name, logPath string, cmd *exec.Cmd) (*proc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("make %s log: %w", name, err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so that a signal to the test's group does
	// not reach it before Close has stopped what it runs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// waitReady calls ready every 50 ms until it reports true; it fails if
// the process exits, ctx ends or limit passes first.
func (p *proc) waitReady(ctx context.Context, limit time.Duration, ready func(context.Context) bool) error {
	deadline := time.Now().Add(limit)
	for !ready(ctx) {
		select {
		case <-p.done:
			return fmt.Errorf("%s exited: %v: %s", p.name, p.err, p.tail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %s", p.name, limit, p.tail())
		}
	}
	return nil
}

// stop ends the process: SIGTERM, then SIGKILL if it has not exited after
// grace. It returns an error if it had to kill. Safe on a nil proc and
// to call twice.
func (p *proc) stop(grace time.Duration) error {
	if p == nil {
		return nil
	}
	select {
	case <-p.done:
		return nil
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
		p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop in %v: killed", p.name, grace)
	}
}

// tail returns the end of the log, for errors.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

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
