package dockertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flowmap/flowmap/internal/daemon"
)

// Containerd is a running containerd with its CRI plugin, on a bridge of
// its own made by the CNI bridge plugin, for tests of CRI clients: pods
// are made through the CRI API (RunPodSandbox, CreateContainer), images
// are loaded with ImportImage (the sandbox image is SandboxImage).
//
// Like Daemon it changes nothing outside what it creates: the CNI bridge
// has no gateway (isGateway turns on the machine's IP forwarding) and no
// masquerade, so pods reach each other over layer 2 and nothing else.
type Containerd struct {
	// Socket is the CRI (and containerd) gRPC socket.
	Socket string
	// Bridge is the CNI bridge, "<Prefix>-cni".
	Bridge string
	Subnet netip.Prefix
	Dir    string

	proc *daemon.Proc
}

// SandboxImage is the pod sandbox ("pause") image that StartContainerd
// configures and loads: busybox sleeping.
const SandboxImage = "docker.io/library/fme-pause:1"

// StartContainerd starts containerd with the CRI plugin, loads
// SandboxImage and waits until it answers. Close stops it and removes
// what it made. Needs root, containerd, containerd-shim-runc-v2, ctr,
// runc and the CNI plugins in /usr/lib/cni (Debian: containerd, runc,
// containernetworking-plugins).
func StartContainerd(ctx context.Context, opts Options) (*Containerd, error) {
	bin, dir, err := prepare(opts, "containerd", "containerd", "fmc-")
	if err != nil {
		return nil, err
	}
	c := &Containerd{
		Socket: filepath.Join(dir, "containerd.sock"),
		Bridge: opts.Prefix + "-cni",
		Subnet: opts.Subnet.Masked(),
		Dir:    dir,
	}
	cniDir := filepath.Join(dir, "cni")
	if err := os.MkdirAll(cniDir, 0o755); err != nil {
		return nil, fmt.Errorf("make cni directory: %w", err)
	}
	conflist := fmt.Sprintf(`{"cniVersion":"0.4.0","name":%q,"plugins":[{"type":"bridge","bridge":%q,
"isGateway":false,"ipMasq":false,"ipam":{"type":"host-local","ranges":[[{"subnet":%q}]],"dataDir":%q}}]}`,
		opts.Prefix, c.Bridge, c.Subnet.String(), filepath.Join(dir, "ipam"))
	if err := os.WriteFile(filepath.Join(cniDir, "10-fm.conflist"), []byte(conflist), 0o644); err != nil {
		return nil, fmt.Errorf("write cni config: %w", err)
	}
	config := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
[grpc]
  address = %[3]q
[ttrpc]
  address = "%[3]s.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = %[4]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[5]q
  disable_apparmor = true
  # The CRI plugin gives sandboxes an oom_score_adj of -998; where the
  # machine refuses a lower score than containerd's own (here: "failed to
  # update /proc/self/oom_score_adj: permission denied"), runc fails.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %[6]q
    max_conf_num = 1
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.Socket, filepath.Join(dir, "opt"), SandboxImage, cniDir)
	configPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
		return nil, fmt.Errorf("write containerd config: %w", err)
	}
	if c.proc, err = daemon.Start("containerd", filepath.Join(dir, "containerd.log"), exec.Command(bin, "--config", configPath), false); err != nil {
		c.Close()
		return nil, err
	}
	if err := c.proc.WaitReady(ctx, 30*time.Second, c.ready); err != nil {
		c.Close()
		return nil, err
	}
	if err := c.ImportImage(ctx, SandboxImage, []string{"/bin/sleep", "2147483647"}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// ready reports whether containerd's socket takes connections.
func (c *Containerd) ready(context.Context) bool {
	conn, err := net.Dial("unix", c.Socket)
	if err == nil {
		conn.Close()
	}
	return err == nil
}

// Restart stops containerd (SIGTERM; its shims and containers run on, as
// they do through an upgrade of containerd on a node) and starts it again
// on the same state, waiting until it answers.
func (c *Containerd) Restart(ctx context.Context) error {
	return c.proc.Restart(ctx, 15*time.Second, 30*time.Second, c.ready)
}

// StartContainerdT starts a Containerd that is closed when t ends, and
// fails t if it cannot.
func StartContainerdT(t testing.TB, opts Options) *Containerd {
	t.Helper()
	return startT(t, "containerd", "containerd runc containernetworking-plugins",
		[]string{"containerd", "containerd-shim-runc-v2", "ctr", "runc", "/usr/lib/cni/bridge", "/usr/lib/cni/host-local", "/usr/lib/cni/loopback"},
		func() (*Containerd, error) { return StartContainerd(context.Background(), opts) })
}

// ImportImage loads the busybox image running cmd as name (a full
// reference, docker.io/library/…) into the CRI plugin's namespace.
func (c *Containerd) ImportImage(ctx context.Context, name string, cmd []string) error {
	archive, err := OCIArchive(name, cmd)
	if err != nil {
		return err
	}
	ctr := exec.CommandContext(ctx, "ctr", "--address", c.Socket, "--namespace", "k8s.io", "images", "import", "-")
	ctr.Stdin = bytes.NewReader(archive)
	if out, err := ctr.CombinedOutput(); err != nil {
		return fmt.Errorf("ctr images import %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Close stops containerd: it first kills the shims and containers it left
// (containerd does not stop them on exit), then removes the bridge and the
// directory. Pods should be stopped and removed through CRI before, so
// that CNI releases their namespaces (under /run/netns) and addresses.
// Safe to call twice.
func (c *Containerd) Close() error {
	var errs []error
	// Containers run under shims that outlive containerd: end them by
	// the pids runc recorded, before containerd goes.
	c.killContainers()
	// Killed after 15 s if need be: its containers are gone already.
	_ = c.proc.Stop(15 * time.Second)
	if c.Bridge != "" {
		if err := delBridge(c.Bridge); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Dir != "" {
		daemon.UnmountUnder(c.Dir)
		if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", c.Dir, err))
		}
	}
	return errors.Join(errs...)
}

// killContainers kills the shims and container processes whose state is
// under c.Dir, by the pid files the runc shim writes.
func (c *Containerd) killContainers() {
	if c.Dir == "" {
		return
	}
	var pids []int
	filepath.WalkDir(filepath.Join(c.Dir, "state"), func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if name := d.Name(); name == "init.pid" || name == "shim.pid" {
			b, err := os.ReadFile(path)
			if err != nil {
				return nil
			}
			var pid int
			if _, err := fmt.Sscan(string(b), &pid); err == nil && pid > 1 {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	if len(pids) > 0 {
		time.Sleep(200 * time.Millisecond)
	}
}

// prepare checks opts for a runtime that needs a subnet of its own, finds
// its program (from Debian package pkg) and makes its directory.
func prepare(opts Options, program, pkg, dirPrefix string) (bin, dir string, err error) {
	if opts.Prefix == "" || len(opts.Prefix) > 11 {
		return "", "", fmt.Errorf("dockertest prefix %q: want 1 to 11 characters", opts.Prefix)
	}
	if !opts.Subnet.IsValid() {
		return "", "", fmt.Errorf("%s needs a subnet", program)
	}
	if bin, err = exec.LookPath(program); err != nil {
		return "", "", fmt.Errorf("find %s: %w (on Debian: apt-get install %s)", program, err, pkg)
	}
	if dir, err = os.MkdirTemp("", dirPrefix); err != nil {
		return "", "", fmt.Errorf("make %s directory: %w", program, err)
	}
	return bin, dir, nil
}
