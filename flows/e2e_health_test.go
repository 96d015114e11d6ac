package flows_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"reflect"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowmap/flowmap/flows"
	"github.com/flowmap/flowmap/internal/sandboxtest"
	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/sandbox"
)

// health sums the health of recs.
func health(recs []model.Record) model.Health {
	var h model.Health
	for _, r := range recs {
		if r.Health != nil {
			h.Add(r.Health)
		}
	}
	return h
}

// toPort returns the records from a to b's port, in either orientation.
func toPort(recs []model.Record, a, b netip.Addr, port uint16) []model.Record {
	return find(recs, a, b, model.ProtoTCP, port)
}

// run runs a command and fails t with its output if it fails.
func run(t *testing.T, h *sandbox.Host, name string, args ...string) {
	t.Helper()
	cmd := h.Command(context.Background(), name, args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
	}
}

// TestEndToEndHealth: connection outcomes, drops with the kernel's reason
// and RTT on real traffic between two namespaces. Needs root and iptables.
func TestEndToEndHealth(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	if err := sandbox.Cleanup("fmh"); err != nil {
		t.Fatalf("remove leftovers: %v", err)
	}
	sb := sandboxtest.New(t, sandbox.Options{Prefix: "fmh", Subnet: e2eSubnet})
	a := mustHost(t, sb, "a")
	b := mustHost(t, sb, "b")
	c := runDatapath(t, flows.Config{Interfaces: []string{"fmh-*"}})

	// A closed port: each attempt is refused by an RST, and the SYN
	// dropped by b's stack for want of a socket.
	const refusals = 3
	closedLn, err := b.Listen("tcp4", net.JoinHostPort(b.Addr.String(), "0"))
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	closedPort := uint16(closedLn.Addr().(*net.TCPAddr).Port)
	closedLn.Close()
	for range refusals {
		_, err := a.Dial("tcp4", net.JoinHostPort(b.Addr.String(), strconv.Itoa(int(closedPort))))
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("dial a closed port: %v, want connection refused", err)
		}
	}

	// A DROP rule in b's namespace: each attempt sends a SYN and retries
	// (TCP_SYNCNT 1: 6.18 sends two), all dropped by netfilter, and times
	// out.
	const timeouts = 2
	const dropPort = 9
	run(t, b, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", strconv.Itoa(dropPort), "-j", "DROP")
	var wg sync.WaitGroup
	for range timeouts {
		wg.Go(func() {
			err := a.Do(func() error {
				d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
					var serr error
					if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_SYNCNT, 1) }); err != nil {
						return err
					}
					return serr
				}}
				_, err := d.Dial("tcp4", net.JoinHostPort(b.Addr.String(), strconv.Itoa(dropPort)))
				return err
			})
			if !errors.Is(err, syscall.ETIMEDOUT) {
				t.Errorf("dial through a DROP rule: %v, want a timeout", err)
			}
		})
	}
	wg.Wait()

	// A server that goes away with unread data resets the connection.
	resetLn, err := b.Listen("tcp4", net.JoinHostPort(b.Addr.String(), "0"))
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer resetLn.Close()
	resetPort := uint16(resetLn.Addr().(*net.TCPAddr).Port)
	accepted := make(chan error, 1)
	go func() {
		s, err := resetLn.Accept()
		if err == nil {
			// Read half of the one write: the rest is unread at Close.
			_, err = io.ReadFull(s, make([]byte, 100))
			s.Close()
		}
		accepted <- err
	}()
	conn, err := a.Dial("tcp4", resetLn.Addr().String())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	if _, err := conn.Write(make([]byte, 200)); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := <-accepted; err != nil {
		t.Fatalf("server: %v", err)
	}
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after the server's reset: %v, want connection reset", err)
	}
	conn.Close()

	// Nothing fails.
	okPort, _ := sendTCP(t, a.Dial, b, b.Addr, 64<<10)

	// Round trips for RTT samples. (This kernel has neither netem nor fq
	// to delay them by a known time: CONFIG_NET_SCH_NETEM and _FQ unset.)
	rttPort := echo(t, a, b, 30)

	recs := c.flows(t)
	// Every SYN sent through the DROP rule was dropped there, and counted
	// as an attempt or a retry; 6.18 sends three.
	if h := health(toPort(recs, a.Addr, b.Addr, dropPort)); h.Drops["NETFILTER_DROP"] != h.Attempts+h.SYNRetries {
		t.Errorf("through the DROP rule: %d SYNs dropped, want every SYN sent: %d attempts and %d retries",
			h.Drops["NETFILTER_DROP"], h.Attempts, h.SYNRetries)
	}
	cases := []struct {
		name string
		port uint16
		want model.Health
	}{
		{"refused", closedPort, model.Health{Attempts: refusals, Refused: refusals, Drops: map[string]uint64{"NO_SOCKET": refusals}}},
		{"timed out", dropPort, model.Health{Attempts: timeouts, SYNRetries: 2 * timeouts, TimedOut: timeouts,
			Drops: map[string]uint64{"NETFILTER_DROP": 3 * timeouts}}},
		{"reset by the server", resetPort, model.Health{Attempts: 1, Established: 1, ResetByServer: 1}},
		{"nothing failed", okPort, model.Health{Attempts: 1, Established: 1, Closed: 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := health(toPort(recs, a.Addr, b.Addr, tc.port))
			// RTT samples depend on timing: checked below.
			got.RTTSum, got.RTTSamples = 0, 0
			if got.Failure() != tc.want.Failure() || !equalHealth(got, tc.want) {
				t.Errorf("health = %+v, want %+v", got, tc.want)
			}
		})
	}
	t.Run("rtt", func(t *testing.T) {
		h := health(toPort(recs, a.Addr, b.Addr, rttPort))
		if h.RTTSamples == 0 {
			t.Fatalf("no RTT samples: %+v", h)
		}
		if got := h.RTT(); got <= 0 || got > 10*time.Millisecond {
			t.Errorf("RTT = %s over %d samples, want above 0 and below 10ms (a veth pair)", got, h.RTTSamples)
		}
	})
}

func equalHealth(a, b model.Health) bool {
	if len(a.Drops) == 0 && len(b.Drops) == 0 {
		a.Drops, b.Drops = nil, nil
	}
	return reflect.DeepEqual(a, b)
}

// echo makes n round trips of 100 bytes from a to an echo server on b,
// and returns the server's port.
func echo(t *testing.T, a, b *sandbox.Host, n int) uint16 {
	t.Helper()
	ln, err := b.Listen("tcp4", net.JoinHostPort(b.Addr.String(), "0"))
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	go func() {
		s, err := ln.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		io.Copy(s, s)
	}()
	conn, err := a.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	buf := make([]byte, 100)
	for range n {
		if _, err := conn.Write(buf); err != nil {
			t.Fatalf("write: %v", err)
		}
		if _, err := io.ReadFull(conn, buf); err != nil {
			t.Fatalf("read: %v", err)
		}
	}
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}
