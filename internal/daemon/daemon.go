// Package daemon runs the daemons that tests start (dockerd, containerd,
// the Podman service, the Kubernetes box's components): each in a process
// group of its own with its output in a log file, waited for until ready,
// stopped with SIGTERM then SIGKILL. A test helper: never linked into the
// flowmap binary.
package daemon

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Proc is a daemon process started by Start.
type Proc struct {
	name  string // for errors: "dockerd"
	log   string // the log file
	group bool   // signal its whole process group
	cmd   *exec.Cmd
	done  chan struct{}
	err   error // the exit, once done is closed
}

// Start starts cmd as the daemon name, its output going to the file
// logPath, in a process group of its own so that a signal to the test's
// group does not reach it before its owner stops it. With group, Stop
// signals the whole group (the daemon and what it started), and the
// daemon is killed if the test process dies.
func Start(name, logPath string, cmd *exec.Cmd, group bool) (*Proc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("make %s log: %w", name, err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if group {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{name: name, log: logPath, group: group, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// WaitReady calls ready every 50 ms until it reports true; it fails if
// the process exits, ctx ends or limit passes first.
func (p *Proc) WaitReady(ctx context.Context, limit time.Duration, ready func(context.Context) bool) error {
	deadline := time.Now().Add(limit)
	for !ready(ctx) {
		select {
		case <-p.done:
			return fmt.Errorf("%s exited: %v: %s", p.name, p.err, p.Tail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %s", p.name, limit, p.Tail())
		}
	}
	return nil
}

// Stop ends the process (or its group): SIGTERM, then SIGKILL if it has
// not exited after grace. It returns an error if it had to kill. Safe on
// a nil Proc and to call twice.
func (p *Proc) Stop(grace time.Duration) error {
	if p == nil {
		return nil
	}
	select {
	case <-p.done:
		return nil
	default:
	}
	p.signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
		p.signal(syscall.SIGKILL)
		<-p.done
		return fmt.Errorf("%s did not stop in %v: killed", p.name, grace)
	}
}

func (p *Proc) signal(sig syscall.Signal) {
	if p.group {
		syscall.Kill(-p.cmd.Process.Pid, sig)
		return
	}
	p.cmd.Process.Signal(sig)
}

// Pid returns the daemon's process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Tail returns the end of the log, for errors.
func (p *Proc) Tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return strings.TrimSpace(string(b))
}

// Restart stops the process as Stop does, after grace at the most, and
// starts its command again (the same program, arguments, environment and
// directory), its output appended to the same log; then it waits for
// ready as WaitReady does, for limit at the most: what an upgrade of a
// runtime does to a node.
func (p *Proc) Restart(ctx context.Context, grace, limit time.Duration, ready func(context.Context) bool) error {
	if err := p.Stop(grace); err != nil {
		return fmt.Errorf("stop %s to restart it: %w", p.name, err)
	}
	logf, err := os.OpenFile(p.log, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("open %s log: %w", p.name, err)
	}
	defer logf.Close()
	old := p.cmd
	cmd := exec.Command(old.Path, old.Args[1:]...)
	cmd.Env, cmd.Dir, cmd.SysProcAttr = old.Env, old.Dir, old.SysProcAttr
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("restart %s: %w", p.name, err)
	}
	p.cmd, p.done, p.err = cmd, make(chan struct{}), nil
	go func(done chan struct{}) {
		p.err = cmd.Wait()
		close(done)
	}(p.done)
	return p.WaitReady(ctx, limit, ready)
}

// Name returns the daemon's name.
func (p *Proc) Name() string { return p.name }

// UnmountUnder lazily unmounts every mount point under dir, deepest first:
// what a runtime daemon (containerd, dockerd, the kubelet) leaves mounted
// under its state directory.
func UnmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var points []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			points = append(points, f[4])
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		syscall.Unmount(points[i], syscall.MNT_DETACH)
	}
}
