package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/flowmap/flowmap/flows"
)

// agentListen is where the agent the bench runs serves its API.
const agentListen = "127.0.0.1:19477"

// agentStart is how long the agent may take to attach and be ready.
const agentStart = time.Minute

// buildAgent builds flowmap's binary into dir, for the bench to run the
// agent as a process of its own: its CPU time and memory are then its
// own, not the bench's load generators'.
func buildAgent(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "flowmap")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/flowmap/flowmap/cmd/flowmap")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build flowmap: %w: %s", err, out)
	}
	return bin, nil
}

// attachAgent runs flowmap's agent on the veths as it runs on a node, with
// its defaults but the interfaces, the hooks of mode m and the drain
// interval; and finds its programs on the veths.
func (b *bench) attachAgent(ctx context.Context, m mode, ifindexes []int) (_ *attached, err error) {
	args := []string{"agent", "--interfaces", b.prefix + "-*", "--attach", "tcx",
		"--interval", b.interval.String(), "--listen", agentListen, "--log-level", b.agentLog}
	if b.profile != "" && m.hook == hookTC {
		n := b.profiled[b.curLoad]
		b.profiled[b.curLoad]++
		base := filepath.Join(b.profile, fmt.Sprintf("%s-%d", b.curLoad, n))
		args = append(args, "--cpu-profile", base+".cpu.pprof", "--heap-profile", base+".heap.pprof")
	}
	if m.healthOff {
		args = append(args, "--health", "off")
	}
	switch m.hook {
	case hookXDPNative:
		args = append(args, "--xdp", b.prefix+"-*", "--xdp-mode", "native")
	case hookXDPGeneric:
		args = append(args, "--xdp", b.prefix+"-*", "--xdp-mode", "generic")
	}
	cmd := exec.Command(b.agentBin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if b.agentLog == "debug" {
		cmd.Stderr = io.MultiWriter(&stderr, os.Stderr)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start agent: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var progs []*ebpf.Program
	stop := func() error {
		for _, p := range progs {
			p.Close()
		}
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("agent: %w: %s", err, stderr.String())
			}
			return nil
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			return fmt.Errorf("agent did not stop within 10s of SIGTERM: %s", stderr.String())
		}
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, stop())
		}
	}()

	a := &attached{close: stop, pid: cmd.Process.Pid}
	// Loading and verifying the programs takes seconds on a busy machine.
	deadline := time.Now().Add(agentStart)
	for {
		in, eg, err := agentPrograms(m.hook, ifindexes)
		if err == nil && in != nil && eg != nil && ready(ctx) {
			progs = []*ebpf.Program{in, eg}
			a.ingress, a.egress = in, eg
			break
		}
		for _, p := range []*ebpf.Program{in, eg} {
			if p != nil {
				p.Close()
			}
		}
		select {
		case err := <-done:
			done <- err
			return nil, fmt.Errorf("agent exited before it attached: %v: %s", err, stderr.String())
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("agent not attached to the veths after %v (last: %v): %s", agentStart, err, stderr.String())
		}
	}
	if err := checkXDP(m.hook, ifindexes); err != nil {
		return nil, err
	}
	if b.mapMem == nil {
		if b.mapMem, err = flows.MapsOf(a.ingress, a.egress); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// ready reports whether the agent's /readyz answers 200.
func ready(ctx context.Context) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+agentListen+"/readyz", nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// agentPrograms returns the agent's ingress and egress programs when
// every veth has them: the same programs on each.
func agentPrograms(h hook, ifindexes []int) (in, eg *ebpf.Program, err error) {
	var inID, egID ebpf.ProgramID
	for _, idx := range ifindexes {
		e, err := link.QueryPrograms(link.QueryOptions{Target: idx, Attach: ebpf.AttachTCXEgress})
		if err != nil || len(e.Programs) != 1 {
			return nil, nil, fmt.Errorf("tcx egress programs on ifindex %d: %v", idx, err)
		}
		egID = e.Programs[0].ID
		if h == hookTC {
			i, err := link.QueryPrograms(link.QueryOptions{Target: idx, Attach: ebpf.AttachTCXIngress})
			if err != nil || len(i.Programs) != 1 {
				return nil, nil, fmt.Errorf("tcx ingress programs on ifindex %d: %v", idx, err)
			}
			inID = i.Programs[0].ID
			continue
		}
		l, err := netlink.LinkByIndex(idx)
		if err != nil {
			return nil, nil, err
		}
		x := l.Attrs().Xdp
		if x == nil || !x.Attached {
			return nil, nil, fmt.Errorf("no xdp on ifindex %d", idx)
		}
		inID = ebpf.ProgramID(x.ProgId)
	}
	if in, err = ebpf.NewProgramFromID(inID); err != nil {
		return nil, nil, fmt.Errorf("open ingress program %d: %w", inID, err)
	}
	if eg, err = ebpf.NewProgramFromID(egID); err != nil {
		in.Close()
		return nil, nil, fmt.Errorf("open egress program %d: %w", egID, err)
	}
	return in, eg, nil
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times: 100 on every
// Linux architecture Go runs on.
const clockTicks = 100

// cpuTime returns the user and system time process pid has used.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces: fields count from
	// after it. utime and stime are fields 14 and 15.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %q", pid, s)
	}
	var ticks uint64
	for _, x := range f[11:13] {
		n, err := strconv.ParseUint(x, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// peakRSS returns process pid's peak resident set size (VmHWM), in bytes.
func peakRSS(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse VmHWM %q: %w", v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}
