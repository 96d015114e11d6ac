// Package dockertest runs a Docker engine of its own for end-to-end tests
// and the demo: Debian's dockerd, with its own data root, exec root, pid
// file and sockets under a temporary directory, its containers on a bridge
// of its own in a documentation subnet, and an image made from the
// machine's busybox-static, since no registry can be reached.
//
//	d := dockertest.StartT(t, dockertest.Options{Prefix: "fme"})
//	img, _ := d.ImportBusybox(ctx, "fme-busybox:1")
//	id, _ := d.Docker(ctx, "run", "-d", "--name", "web", img, "httpd", "-f", "-p", "80", "-h", "/www")
//
// The engine changes nothing outside what it creates: it runs with
// --iptables=false, --ip-forward=false and --ip-masq=false, so the
// machine's firewall and forwarding stay as they are and no container
// reaches beyond its bridge (containers on one bridge talk over layer 2,
// which needs no rule). The bridge is "<Prefix>-br", made before dockerd
// starts and given to it with --bridge, so that the engine never takes
// docker0 or a private range, and parallel engines do not collide.
//
// The package needs root and the commands dockerd and docker (Debian:
// docker.io) and, for ImportBusybox, busybox (Debian: busybox-static).
package dockertest

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/flowmap/flowmap/internal/daemon"
)

// DefaultSubnet is the bridge's subnet when Options leave it unset: a part
// of TEST-NET-2 that other packages' tests do not use.
var DefaultSubnet = netip.MustParsePrefix("198.51.100.192/27")

// Options configures a Daemon.
type Options struct {
	// Prefix names the bridge, "<Prefix>-br": lower-case letters and
	// digits, at most 12. Required.
	Prefix string
	// Subnet is the bridge's; the bridge takes its first address and
	// containers the following ones. Zero means DefaultSubnet.
	Subnet netip.Prefix
}

// Daemon is a running dockerd.
type Daemon struct {
	// Socket is the API socket for the test's own docker commands.
	Socket string
	// AgentSocket is a second socket on the same engine, for the code
	// under test: a test can remove it to take the engine away from that
	// code while it still drives the engine through Socket.
	AgentSocket string
	Bridge      string
	Subnet      netip.Prefix
	// Dir holds the data root, exec root, pid file, sockets and log.
	Dir string

	proc *daemon.Proc
}

// Start starts dockerd and waits until it answers. Close stops it and
// removes what Start made.
func Start(ctx context.Context, opts Options) (*Daemon, error) {
	if opts.Prefix == "" || len(opts.Prefix) > 12 {
		return nil, fmt.Errorf("dockertest prefix %q: want 1 to 12 characters", opts.Prefix)
	}
	if !opts.Subnet.IsValid() {
		opts.Subnet = DefaultSubnet
	}
	dockerd, err := exec.LookPath("dockerd")
	if err != nil {
		return nil, fmt.Errorf("find dockerd: %w (on Debian: apt-get install docker.io)", err)
	}
	// Short: containerd's socket lives under the exec root, and a unix
	// socket path has at most 107 bytes.
	dir, err := os.MkdirTemp("", "fmd-")
	if err != nil {
		return nil, fmt.Errorf("make dockerd directory: %w", err)
	}
	d := &Daemon{
		Socket:      filepath.Join(dir, "docker.sock"),
		AgentSocket: filepath.Join(dir, "agent.sock"),
		Bridge:      opts.Prefix + "-br",
		Subnet:      opts.Subnet.Masked(),
		Dir:         dir,
	}
	if err := d.makeBridge(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	config := filepath.Join(dir, "daemon.json")
	if err := os.WriteFile(config, []byte("{}\n"), 0o644); err != nil {
		d.Close()
		return nil, fmt.Errorf("write dockerd config: %w", err)
	}
	cmd := exec.Command(dockerd,
		"--config-file", config, // not /etc/docker/daemon.json
		"--data-root", filepath.Join(dir, "data"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "dockerd.pid"),
		"-H", "unix://"+d.Socket,
		"-H", "unix://"+d.AgentSocket,
		"--bridge", d.Bridge,
		"--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
		"--userland-proxy=false",
		// vfs copies layers instead of mounting overlays: slower for big
		// images, but a busybox image is 2 MB and vfs works on any
		// filesystem the temporary directory is on.
		"--storage-driver", "vfs",
		"--log-level", "warn",
	)
	if d.proc, err = daemon.Start("dockerd", filepath.Join(dir, "dockerd.log"), cmd, false); err != nil {
		d.Close()
		return nil, err
	}
	if err := d.proc.WaitReady(ctx, 60*time.Second, d.ready); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// ready reports whether dockerd answers on its API socket.
func (d *Daemon) ready(ctx context.Context) bool { return ping(ctx, d.Client(d.Socket), "docker") }

// Restart stops dockerd as Close does (SIGTERM, which stops its
// containers) and starts it again on the same roots and sockets, waiting
// until it answers. Containers started with a restart policy come back;
// the others stay stopped.
func (d *Daemon) Restart(ctx context.Context) error {
	return d.proc.Restart(ctx, 30*time.Second, 60*time.Second, d.ready)
}

// StartT starts a Daemon that is closed when t ends. It fails t if the
// test is not run as root, a command is missing, or Start fails.
func StartT(t testing.TB, opts Options) *Daemon {
	t.Helper()
	return startT(t, "dockerd", "docker.io", []string{"dockerd", "docker"},
		func() (*Daemon, error) { return Start(context.Background(), opts) })
}

func (d *Daemon) makeBridge() error {
	return addBridge(d.Bridge, netip.PrefixFrom(d.Subnet.Addr().Next(), d.Subnet.Bits()))
}

func (d *Daemon) removeBridge() error { return delBridge(d.Bridge) }

// addBridge adds the bridge name, up, with addr if it is valid.
func addBridge(name string, addr netip.Prefix) error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := netlink.LinkAdd(br); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("add bridge %s: %w (left by a crashed run? ip link del %s)", name, err, name)
		}
		return fmt.Errorf("add bridge %s: %w", name, err)
	}
	if addr.IsValid() {
		a, err := netlink.ParseAddr(addr.String())
		if err != nil {
			delBridge(name)
			return fmt.Errorf("parse bridge address: %w", err)
		}
		if err := netlink.AddrAdd(br, a); err != nil {
			delBridge(name)
			return fmt.Errorf("address bridge %s: %w", name, err)
		}
	}
	if err := netlink.LinkSetUp(br); err != nil {
		delBridge(name)
		return fmt.Errorf("set bridge %s up: %w", name, err)
	}
	return nil
}

// delBridge deletes the link name, if it is there.
func delBridge(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		if _, ok := err.(netlink.LinkNotFoundError); ok {
			return nil
		}
		return fmt.Errorf("find bridge %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("delete bridge %s: %w", name, err)
	}
	return nil
}

// ping reports whether the engine behind client (a Docker API on a unix
// socket; host names the engine in the URL) answers /_ping.
func ping(ctx context.Context, client *http.Client, host string) bool {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+"/_ping", nil)
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Client returns an HTTP client that reaches the engine on socket, for
// requests to http://docker/….
func (d *Daemon) Client(socket string) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", socket)
		},
	}}
}

// PID returns dockerd's process id.
func (d *Daemon) PID() int { return d.proc.Pid() }

// Docker runs the docker command against the engine and returns its
// standard output, trimmed.
func (d *Daemon) Docker(ctx context.Context, args ...string) (string, error) {
	return d.docker(ctx, nil, args...)
}

func (d *Daemon) docker(ctx context.Context, stdin io.Reader, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "docker", append([]string{"-H", "unix://" + d.Socket}, args...)...)
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// ImportBusybox makes the image name from the machine's busybox: a root
// file system of /bin/busybox, a link to it for each applet, and /www with
// an index.html for busybox httpd. It returns name.
func (d *Daemon) ImportBusybox(ctx context.Context, name string) (string, error) {
	rootfs, err := BusyboxRootFS()
	if err != nil {
		return "", err
	}
	if _, err := d.docker(ctx, bytes.NewReader(rootfs), "import", "--change", `CMD ["/bin/sh"]`, "-", name); err != nil {
		return "", err
	}
	return name, nil
}

// BusyboxRootFS returns a tar archive of a root file system with busybox
// (found in $PATH, which must be a static build) and its applets.
func BusyboxRootFS() ([]byte, error) {
	path, err := exec.LookPath("busybox")
	if err != nil {
		return nil, fmt.Errorf("find busybox: %w (on Debian: apt-get install busybox-static)", err)
	}
	bin, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read busybox: %w", err)
	}
	out, err := exec.Command(path, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("list busybox applets: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	for _, dir := range []string{"bin/", "etc/", "tmp/", "proc/", "sys/", "dev/", "www/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: now}); err != nil {
			return nil, fmt.Errorf("write rootfs: %w", err)
		}
	}
	files := []struct {
		name string
		mode int64
		body []byte
	}{
		{"bin/busybox", 0o755, bin},
		{"www/index.html", 0o644, []byte("flowmap\n")},
		{"etc/passwd", 0o644, []byte("root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")},
		{"etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n")},
	}
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: f.mode, Size: int64(len(f.body)), ModTime: now}); err != nil {
			return nil, fmt.Errorf("write rootfs: %w", err)
		}
		if _, err := tw.Write(f.body); err != nil {
			return nil, fmt.Errorf("write rootfs: %w", err)
		}
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" || strings.Contains(applet, "/") {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + applet, Linkname: "busybox", Mode: 0o777, ModTime: now}); err != nil {
			return nil, fmt.Errorf("write rootfs: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("write rootfs: %w", err)
	}
	return buf.Bytes(), nil
}

// Close stops dockerd (SIGTERM, which stops its containers; SIGKILL after
// 30s), then removes the bridge and the directory. It is safe to call
// twice.
func (d *Daemon) Close() error {
	var errs []error
	if err := d.proc.Stop(30 * time.Second); err != nil {
		errs = append(errs, err)
	}
	if err := d.removeBridge(); err != nil {
		errs = append(errs, err)
	}
	if d.Dir != "" {
		// What dockerd left mounted under its roots (a netns of a killed
		// container) would keep RemoveAll from finishing.
		daemon.UnmountUnder(d.Dir)
		if err := os.RemoveAll(d.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", d.Dir, err))
		}
	}
	return errors.Join(errs...)
}

// OCIArchive returns an OCI image layout, as a tar archive, of the busybox
// root file system (see BusyboxRootFS) that runs cmd, named name (as
// docker.io/library/fme-busybox:1): for runtimes that load images from a
// file, as `ctr images import` and `podman load` do.
func OCIArchive(name string, cmd []string) ([]byte, error) {
	layer, err := BusyboxRootFS()
	if err != nil {
		return nil, err
	}
	digest := func(b []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(b)) }
	config, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config":       map[string]any{"Cmd": cmd},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{digest(layer)}},
	})
	if err != nil {
		return nil, fmt.Errorf("make image config: %w", err)
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config), "size": len(config)},
		"layers":        []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(layer), "size": len(layer)}},
	})
	if err != nil {
		return nil, fmt.Errorf("make image manifest: %w", err)
	}
	tag := name[strings.LastIndexByte(name, ':')+1:]
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"manifests": []any{map[string]any{
			"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(manifest), "size": len(manifest),
			"annotations": map[string]string{"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
		}},
	})
	if err != nil {
		return nil, fmt.Errorf("make image index: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	files := []struct {
		name string
		body []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{"blobs/sha256/" + digest(layer)[7:], layer},
		{"blobs/sha256/" + digest(config)[7:], config},
		{"blobs/sha256/" + digest(manifest)[7:], manifest},
	}
	for _, dir := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: now}); err != nil {
			return nil, fmt.Errorf("write image archive: %w", err)
		}
	}
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: int64(len(f.body)), ModTime: now}); err != nil {
			return nil, fmt.Errorf("write image archive: %w", err)
		}
		if _, err := tw.Write(f.body); err != nil {
			return nil, fmt.Errorf("write image archive: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("write image archive: %w", err)
	}
	return buf.Bytes(), nil
}
