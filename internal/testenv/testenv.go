// Package testenv holds checks for what a test needs from the machine: root,
// a command, kernel BTF.
//
// Each check fails the test, naming what is missing and how to get it; none
// skips. A test states its needs on its first lines, as with Go's own
// internal/testenv:
//
//	testenv.MustBeRoot(t)
//	iperf3 := testenv.MustHaveCommand(t, "iperf3")
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// BTFPath is where the kernel exposes its own BTF.
const BTFPath = "/sys/kernel/btf/vmlinux"

// debianPackages names the Debian package providing the commands our tests
// use, for the hint in MustHaveCommand's message.
var debianPackages = map[string]string{
	"bpftool":    "bpftool",
	"busybox":    "busybox-static",
	"containerd": "containerd",
	"docker":     "docker.io",
	"dockerd":    "docker.io",
	"dot":        "graphviz",
	"podman":     "podman",
	"prometheus": "prometheus",
	"runc":       "runc",
	"wrk":        "wrk",
	"bridge":     "iproute2",
	"clang":      "clang",
	"ethtool":    "ethtool",
	"ip":         "iproute2",
	"iperf3":     "iperf3",
	"hping3":     "hping3",
	"iptables":   "iptables",
	"nft":        "nftables",
	"ping":       "iputils-ping",
	"promtool":   "prometheus",
	"ss":         "iproute2",
	"tc":         "iproute2",
	"tcpdump":    "tcpdump",
}

// MustBeRoot fails t unless the test runs with effective uid 0.
func MustBeRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("test needs root: run as root (uid 0)")
	}
}

// MustHaveCommand returns the path of the command name, looked up in $PATH,
// and fails t if it is not there.
func MustHaveCommand(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		hint := "install the package that provides it"
		if pkg, ok := debianPackages[name]; ok {
			hint = "on Debian: apt-get install " + pkg
		}
		t.Fatalf("test needs command %q: %v (%s)", name, err, hint)
		return ""
	}
	return path
}

// MustHaveBTF fails t if the kernel does not expose its BTF at BTFPath.
func MustHaveBTF(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(BTFPath); err != nil {
		t.Fatalf("test needs kernel BTF: %v (build the kernel with CONFIG_DEBUG_INFO_BTF=y)", err)
	}
}
