// Package k8sbox runs a real one-node Kubernetes cluster on this machine
// for tests: etcd, kube-apiserver (RBAC and the Node authorizer),
// kube-controller-manager, kube-scheduler, a kubelet on a containerd of its
// own (own socket, root and state; runc; the CNI bridge, portmap and
// firewall plugins) and kube-proxy in iptables mode, all built from the Go
// module proxy by the modules under build/ (kept out of flowmap's go.mod)
// and cached. Test helper only; needs root.
//
// Addresses are private ones that only what the box creates uses: the
// node is 10.213.0.1 on the bridge fmk8s0, pods are 10.213.0.0/24 on it,
// Services 10.213.1.0/24. Forwarded traffic from the bridge to any other
// interface is dropped (mangle FORWARD), so nothing a pod sends leaves the
// machine.
package k8sbox

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// Version is the Kubernetes release the box runs; EtcdVersion its etcd;
// PrometheusVersion the Prometheus module (v0.316.0 is Prometheus 3.16)
// whose server the box's Prometheus is.
const (
	Version           = "v1.37.2"
	EtcdVersion       = "v3.6.16"
	PrometheusVersion = "v0.316.0"
)

// Programs are the binaries Build makes.
var Programs = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"}

// CacheDir is where built binaries are kept: $FLOWMAP_K8SBOX_CACHE, or
// flowmap-k8sbox under $XDG_CACHE_HOME, or /var/cache/flowmap-k8sbox.
func CacheDir() string {
	if d := os.Getenv("FLOWMAP_K8SBOX_CACHE"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "flowmap-k8sbox")
	}
	return "/var/cache/flowmap-k8sbox"
}

// buildDir is the directory of the build modules, next to this file.
func buildDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "build")
}

// key names a build: the versions, the modules' go.mod and go.sum, the Go
// toolchain and the architecture.
func key() (string, error) {
	h := sha256.New()
	fmt.Fprintln(h, Version, EtcdVersion, runtime.Version(), runtime.GOARCH)
	for _, f := range []string{"kubernetes/go.mod", "kubernetes/go.sum", "etcd/go.mod", "etcd/go.sum"} {
		b, err := os.ReadFile(filepath.Join(buildDir(), f))
		if err != nil {
			return "", fmt.Errorf("read build module: %w", err)
		}
		h.Write(b)
	}
	return fmt.Sprintf("%s-%x", Version, h.Sum(nil)[:6]), nil
}

// Cached returns the directory of the built binaries if all are cached.
func Cached() (string, bool) {
	k, err := key()
	if err != nil {
		return "", false
	}
	dir := filepath.Join(CacheDir(), k)
	for _, p := range Programs {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			return dir, false
		}
	}
	return dir, true
}

// Build returns the directory of the binaries, building them first if
// they are not cached (cold: about 10 minutes on two cores and 4 GB of Go
// build cache; a relink from a warm build cache: under a minute). Output
// of the go commands goes to out.
func Build(ctx context.Context, log *slog.Logger, out io.Writer) (string, error) {
	dir, ok := Cached()
	if ok {
		return dir, nil
	}
	goBin, err := goCommand()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", fmt.Errorf("make cache directory: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".build-")
	if err != nil {
		return "", fmt.Errorf("make cache directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	major, minor, _ := strings.Cut(strings.TrimPrefix(Version, "v"), ".")
	minor, _, _ = strings.Cut(minor, ".")
	var ldflags []string
	for _, pkg := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		ldflags = append(ldflags, "-X", pkg+".gitVersion="+Version, "-X", pkg+".gitMajor="+major,
			"-X", pkg+".gitMinor="+minor, "-X", pkg+".gitTreeState=clean")
	}
	steps := []struct {
		module string
		args   []string
	}{
		{"etcd", []string{"build", "-trimpath", "-ldflags", "-s -w", "-o", filepath.Join(tmp, "etcd"), "go.etcd.io/etcd/server/v3"}},
		{"kubernetes", []string{"build", "-trimpath", "-ldflags", "-s -w " + strings.Join(ldflags, " "), "-o", tmp + "/", "tool"}},
	}
	for _, s := range steps {
		log.Info("building the cluster's binaries", "module", s.module, "into", dir)
		cmd := exec.CommandContext(ctx, goBin, s.args...)
		cmd.Dir = filepath.Join(buildDir(), s.module)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=readonly -buildvcs=false", "GOWORK=off")
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Run(); err != nil {
			return "", fmt.Errorf("build %s: %w", s.module, err)
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("store build: %w", err)
	}
	return dir, nil
}

// BuildPrometheus returns the path of a Prometheus server built from the
// Go module proxy (build/prometheus), building it first if it is not
// cached: Debian's prometheus is built without kubernetes_sd_configs. Only
// the Kubernetes service discovery is compiled in (remove_all_sd,
// enable_kubernetes_sd), and no web UI assets (the HTTP API is all the
// tests use). Cold: about 4 minutes on two cores.
func BuildPrometheus(ctx context.Context, log *slog.Logger, out io.Writer) (string, error) {
	h := sha256.New()
	fmt.Fprintln(h, PrometheusVersion, runtime.Version(), runtime.GOARCH)
	for _, f := range []string{"prometheus/go.mod", "prometheus/go.sum"} {
		b, err := os.ReadFile(filepath.Join(buildDir(), f))
		if err != nil {
			return "", fmt.Errorf("read build module: %w", err)
		}
		h.Write(b)
	}
	dir := filepath.Join(CacheDir(), fmt.Sprintf("prometheus-%s-%x", PrometheusVersion, h.Sum(nil)[:6]))
	bin := filepath.Join(dir, "prometheus")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	goBin, err := goCommand()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(CacheDir(), 0o755); err != nil {
		return "", fmt.Errorf("make cache directory: %w", err)
	}
	tmp, err := os.MkdirTemp(CacheDir(), ".build-")
	if err != nil {
		return "", fmt.Errorf("make cache directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	log.Info("building Prometheus", "into", dir)
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-tags", "remove_all_sd,enable_kubernetes_sd",
		"-ldflags", "-s -w", "-o", filepath.Join(tmp, "prometheus"), "github.com/prometheus/prometheus/cmd/prometheus")
	cmd.Dir = filepath.Join(buildDir(), "prometheus")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=readonly -buildvcs=false", "GOWORK=off")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build prometheus: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("store build: %w", err)
	}
	return bin, nil
}

// goCommand returns the go command of the toolchain running.
func goCommand() (string, error) {
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		if goBin, err = exec.LookPath("go"); err != nil {
			return "", fmt.Errorf("find go: %w", err)
		}
	}
	return goBin, nil
}
