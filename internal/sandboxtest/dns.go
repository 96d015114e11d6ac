package sandboxtest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/flowmap/flowmap/sandbox"
)

// DNSTTL is the TTL, in seconds, of the answers of StartDNSMasq's server.
const DNSTTL = 60

// StartDNSMasq runs Debian's dnsmasq (package dnsmasq-base) in h until t
// ends, answering for the names in hosts (name → IPv4 address) and NXDOMAIN
// for any other name in their domains, and returns the server's address
// once it listens. It fails t if dnsmasq does not start or exits.
func StartDNSMasq(t testing.TB, h *sandbox.Host, hosts map[string]netip.Addr) netip.AddrPort {
	t.Helper()
	args := []string{
		"--keep-in-foreground", "--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--pid-file=",
		"--user=root", "--bind-interfaces", "--listen-address=" + h.Addr.String(), "--port=53",
		fmt.Sprintf("--local-ttl=%d", DNSTTL), "--log-facility=-", "--log-queries",
	}
	domains := map[string]bool{}
	for name, addr := range hosts {
		args = append(args, "--host-record="+name+","+addr.String())
		if _, dom, ok := strings.Cut(name, "."); ok && !domains[dom] {
			domains[dom] = true
			args = append(args, "--local=/"+dom+"/")
		}
	}
	var log bytes.Buffer
	cmd := h.Command(context.Background(), "dnsmasq", args...)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start dnsmasq in %s: %v", h.NetNS, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("dnsmasq's log:\n%s", log.String())
		}
	})
	server := netip.AddrPortFrom(h.Addr, 53)
	deadline := time.Now().Add(5 * time.Second)
	for {
		// A TCP connection from h's own namespace goes over its lo, which
		// no test watches.
		err := h.Do(func() error {
			c, err := net.DialTimeout("tcp4", server.String(), 100*time.Millisecond)
			if err == nil {
				c.Close()
			}
			return err
		})
		if err == nil {
			return server
		}
		select {
		case err := <-exited:
			t.Fatalf("dnsmasq exited: %v\n%s", err, log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("dnsmasq not listening on %s after 5s: %v\n%s", server, err, log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
