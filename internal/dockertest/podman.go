package dockertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowmap/flowmap/internal/daemon"
)

// Podman is a running `podman system service`: Podman's Docker-compatible
// API on a socket of its own, with its own storage, run root and
// containers.conf, and a CNI network Network on the bridge Bridge.
//
// The containers.conf sets what Podman needs to run here: runc, the
// cgroupfs manager and file events (no systemd), and default ulimits below
// the machine's hard limits (Podman's defaults, nofile and nproc at the
// maximum, make runc fail with "error setting rlimit type 6"). The CNI
// network, written by hand, has no firewall or portmap plugin, no
// gateway and no masquerade, so the machine's firewall and forwarding
// stay as they are.
type Podman struct {
	Socket  string
	Bridge  string
	Network string
	Subnet  netip.Prefix
	Dir     string

	conf string
	proc *daemon.Proc
}

// StartPodman starts Podman's API service and waits until it answers.
// Needs root, podman, runc and the CNI plugins (Debian: podman, runc,
// containernetworking-plugins).
func StartPodman(ctx context.Context, opts Options) (*Podman, error) {
	bin, dir, err := prepare(opts, "podman", "podman", "fmp-")
	if err != nil {
		return nil, err
	}
	p := &Podman{
		Socket:  filepath.Join(dir, "podman.sock"),
		Bridge:  opts.Prefix + "-pbr",
		Network: opts.Prefix + "net",
		Subnet:  opts.Subnet.Masked(),
		Dir:     dir,
		conf:    filepath.Join(dir, "containers.conf"),
	}
	netDir := filepath.Join(dir, "net")
	if err := os.MkdirAll(netDir, 0o755); err != nil {
		return nil, fmt.Errorf("make network directory: %w", err)
	}
	conf := fmt.Sprintf(`[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = %q
[network]
network_backend = "cni"
network_config_dir = %q
`, filepath.Join(dir, "events.log"), netDir)
	conflist := fmt.Sprintf(`{"cniVersion":"0.4.0","name":%q,"plugins":[{"type":"bridge","bridge":%q,
"isGateway":false,"ipMasq":false,"ipam":{"type":"host-local","ranges":[[{"subnet":%q}]],"dataDir":%q}}]}`,
		p.Network, p.Bridge, p.Subnet.String(), filepath.Join(dir, "ipam"))
	if err := os.WriteFile(p.conf, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("write containers.conf: %w", err)
	}
	if err := os.WriteFile(filepath.Join(netDir, p.Network+".conflist"), []byte(conflist), 0o644); err != nil {
		return nil, fmt.Errorf("write cni config: %w", err)
	}
	if err := addBridge(p.Bridge, netip.Prefix{}); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	cmd := exec.Command(bin, append(p.globalFlags(), "system", "service", "--time=0", "unix://"+p.Socket)...)
	cmd.Env = append(os.Environ(), "CONTAINERS_CONF="+p.conf)
	if p.proc, err = daemon.Start("podman service", filepath.Join(dir, "podman.log"), cmd, false); err != nil {
		p.Close()
		return nil, err
	}
	client := (&Daemon{}).Client(p.Socket)
	if err := p.proc.WaitReady(ctx, 60*time.Second, func(ctx context.Context) bool { return ping(ctx, client, "podman") }); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// StartPodmanT starts a Podman that is closed when t ends, and fails t if
// it cannot.
func StartPodmanT(t testing.TB, opts Options) *Podman {
	t.Helper()
	return startT(t, "podman", "podman runc containernetworking-plugins",
		[]string{"podman", "runc", "conmon", "/usr/lib/cni/bridge", "/usr/lib/cni/host-local"},
		func() (*Podman, error) { return StartPodman(context.Background(), opts) })
}

func (p *Podman) globalFlags() []string {
	return []string{"--root", filepath.Join(p.Dir, "root"), "--runroot", filepath.Join(p.Dir, "run"),
		"--storage-driver", "vfs", "--tmpdir", filepath.Join(p.Dir, "tmp")}
}

// Podman runs the podman command with the service's storage and
// configuration, and returns its standard output, trimmed.
func (p *Podman) Podman(ctx context.Context, args ...string) (string, error) {
	return p.podman(ctx, nil, args...)
}

func (p *Podman) podman(ctx context.Context, stdin []byte, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "podman", append(p.globalFlags(), args...)...)
	cmd.Env = append(os.Environ(), "CONTAINERS_CONF="+p.conf)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("podman %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// ImportBusybox makes the image name from the machine's busybox, as
// Daemon.ImportBusybox does.
func (p *Podman) ImportBusybox(ctx context.Context, name string) (string, error) {
	rootfs, err := BusyboxRootFS()
	if err != nil {
		return "", err
	}
	if _, err := p.podman(ctx, rootfs, "import", "--change", `CMD ["/bin/sh"]`, "-", name); err != nil {
		return "", err
	}
	return name, nil
}

// Close removes the containers (so that CNI releases their namespaces
// and addresses), stops the service, and removes the bridge and the
// directory. Safe to call twice.
func (p *Podman) Close() error {
	var errs []error
	if p.proc != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		if _, err := p.Podman(ctx, "rm", "--all", "--force", "--time", "0"); err != nil {
			errs = append(errs, err)
		}
		cancel()
		// Killed after 15 s if need be: its containers are gone already.
		_ = p.proc.Stop(15 * time.Second)
		p.proc = nil
	}
	if err := delBridge(p.Bridge); err != nil {
		errs = append(errs, err)
	}
	if p.Dir != "" {
		daemon.UnmountUnder(p.Dir)
		if err := os.RemoveAll(p.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", p.Dir, err))
		}
	}
	return errors.Join(errs...)
}
