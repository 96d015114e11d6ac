package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowmap/flowmap/internal/testenv"
)

// firewallChildEnv, set in its environment, makes the test binary run
// firewallChild instead of the tests: it holds a firewallCase in JSON.
const firewallChildEnv = "FLOWMAP_SANDBOX_FIREWALL_CASE"

func TestMain(m *testing.M) {
	if c := os.Getenv(firewallChildEnv); c != "" {
		os.Exit(firewallChild(c))
	}
	os.Exit(m.Run())
}

// firewallCase is a machine's firewall, as Docker or Kubernetes leaves it,
// and a sandbox made on it.
type firewallCase struct {
	Backend      string // iptables command whose FORWARD policy is set
	Policy       string // "ACCEPT", "DROP"
	KeepFirewall bool   // Options.KeepFirewall: without the fix
}

// firewallResult is what firewallChild saw.
type firewallResult struct {
	Err         string   // CheckTraffic's error, "" if traffic passed
	NoTraffic   bool     // Err wraps ErrNoTraffic
	RulesDuring []string // FORWARD rules of Backend while the sandbox was up
	RulesAfter  []string // and after Close
}

// TestForwardDrop builds a sandbox on a machine where br_netfilter hands
// bridged frames to iptables (net.bridge.bridge-nf-call-iptables=1) and
// the FORWARD policy of one iptables backend or the other is DROP, as
// Docker leaves it: hosts must reach each other, and Close must leave the
// chain as it found it. Without the sandbox's rule (KeepFirewall) they do
// not, and CheckTraffic says why.
//
// Each case runs in a child process in a network namespace of its own,
// where it sets the sysctl and the policy: both are per namespace, so the
// machine's firewall, and the sandboxes of tests running meanwhile, are
// never touched, even if the test is killed.
func TestForwardDrop(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveCommand(t, "iptables-nft")
	testenv.MustHaveCommand(t, "iptables-legacy")
	mustHaveBrNetfilter(t)
	if err := Cleanup("sbtfw"); err != nil {
		t.Fatalf("Cleanup(sbtfw): %v", err)
	}

	rule := "-A FORWARD " + strings.Join(ruleArgs("sbtfw-br"), " ")
	tests := []struct {
		name string
		c    firewallCase
		// want
		traffic     bool
		rulesDuring []string
	}{
		{"nft accept", firewallCase{Backend: "iptables-nft", Policy: "ACCEPT"}, true, nil},
		{"nft drop", firewallCase{Backend: "iptables-nft", Policy: "DROP"}, true, []string{rule}},
		{"nft drop without rule", firewallCase{Backend: "iptables-nft", Policy: "DROP", KeepFirewall: true}, false, nil},
		{"legacy accept", firewallCase{Backend: "iptables-legacy", Policy: "ACCEPT"}, true, nil},
		{"legacy drop", firewallCase{Backend: "iptables-legacy", Policy: "DROP"}, true, []string{rule}},
		{"legacy drop without rule", firewallCase{Backend: "iptables-legacy", Policy: "DROP", KeepFirewall: true}, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := runFirewallChild(t, tt.c)
			if traffic := got.Err == ""; traffic != tt.traffic {
				t.Errorf("traffic passed = %t, want %t (CheckTraffic: %s)", traffic, tt.traffic, got.Err)
			}
			if !tt.traffic {
				if !got.NoTraffic {
					t.Errorf("CheckTraffic error %q does not wrap ErrNoTraffic", got.Err)
				}
				for _, want := range []string{"net.bridge.bridge-nf-call-iptables=1", tt.c.Backend + ": FORWARD policy DROP"} {
					if !strings.Contains(got.Err, want) {
						t.Errorf("CheckTraffic error %q does not say %q", got.Err, want)
					}
				}
			}
			if !slices.Equal(got.RulesDuring, tt.rulesDuring) {
				t.Errorf("%s FORWARD rules with the sandbox up = %q, want %q", tt.c.Backend, got.RulesDuring, tt.rulesDuring)
			}
			if len(got.RulesAfter) != 0 {
				t.Errorf("%s FORWARD rules after Close = %q, want none", tt.c.Backend, got.RulesAfter)
			}
		})
	}
}

// mustHaveBrNetfilter loads br_netfilter unless it is, and unloads it when
// t ends if it loaded it.
func mustHaveBrNetfilter(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(bridgeNFCall); err == nil {
		return
	}
	modprobe := testenv.MustHaveCommand(t, "modprobe")
	if out, err := exec.Command(modprobe, "br_netfilter").CombinedOutput(); err != nil {
		t.Fatalf("test needs br_netfilter: modprobe br_netfilter: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(modprobe, "-r", "br_netfilter").CombinedOutput(); err != nil {
			t.Errorf("modprobe -r br_netfilter: %v: %s", err, out)
		}
	})
	if _, err := os.Stat(bridgeNFCall); err != nil {
		t.Fatalf("test needs br_netfilter: loaded, but %v", err)
	}
}

// runFirewallChild runs firewallChild for c in a new network and mount
// namespace and returns what it saw.
func runFirewallChild(t *testing.T, c firewallCase) firewallResult {
	t.Helper()
	spec, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = append(os.Environ(), firewallChildEnv+"="+string(spec))
	// With CLONE_NEWNS, Go makes the child's mounts private first, so its
	// own /sys and its namespaces' bind mounts stay its own.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: unix.CLONE_NEWNET | unix.CLONE_NEWNS}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child for %+v: %v\n%s", c, err, stderr.String())
	}
	var r firewallResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("child for %+v: decode %q: %v\n%s", c, out, err, stderr.String())
	}
	return r
}

// firewallChild sets up the firewall of c in the namespace it runs in,
// makes a sandbox of two hosts, checks traffic between them, closes it,
// and writes a firewallResult to stdout. It returns the exit code: 1 if
// something other than the check failed.
func firewallChild(spec string) int {
	r, err := func() (firewallResult, error) {
		var (
			r firewallResult
			c firewallCase
		)
		if err := json.Unmarshal([]byte(spec), &c); err != nil {
			return r, err
		}
		// /sys/class/net shows the namespace of the sysfs mount.
		if err := unix.Mount("sysfs", "/sys", "sysfs", 0, ""); err != nil {
			return r, fmt.Errorf("mount sysfs: %w", err)
		}
		if err := writeSysctls([]sysctl{{"net/bridge/bridge-nf-call-iptables", "1"}}); err != nil {
			return r, err
		}
		b := backend{cmd: c.Backend}
		if _, err := b.run("-P", "FORWARD", c.Policy); err != nil {
			return r, err
		}
		rules := func() ([]string, error) {
			ch, err := b.forward()
			var rs []string
			for _, f := range ch.rules {
				rs = append(rs, strings.Join(f, " "))
			}
			return rs, err
		}

		n, err := New(Options{Prefix: "sbtfw", Subnet: testSubnet, KeepFirewall: c.KeepFirewall})
		if err != nil {
			return r, err
		}
		defer n.Close()
		a, err := n.AddHost("a")
		if err != nil {
			return r, err
		}
		h, err := n.AddHost("b")
		if err != nil {
			return r, err
		}
		if err := n.CheckTraffic(context.Background(), a, h); err != nil {
			r.Err, r.NoTraffic = err.Error(), errors.Is(err, ErrNoTraffic)
		}
		if r.RulesDuring, err = rules(); err != nil {
			return r, err
		}
		if err := n.Close(); err != nil {
			return r, err
		}
		r.RulesAfter, err = rules()
		return r, err
	}()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
