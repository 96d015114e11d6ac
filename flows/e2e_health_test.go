package flows_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowmap/flowmap/flows"
	delaypath "github.com/flowmap/flowmap/internal/delay"
	"github.com/flowmap/flowmap/internal/sandboxtest"
	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/sandbox"
)

// healthSandbox makes hosts a and b in a sandbox of prefix, with the
// datapath on their veths, health on. It skips t without root or BTF.
func healthSandbox(t *testing.T, prefix string) (a, b *sandbox.Host, c *collector) {
	t.Helper()
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	if err := sandbox.Cleanup(prefix); err != nil {
		t.Fatalf("remove leftovers: %v", err)
	}
	sb := sandboxtest.New(t, sandbox.Options{Prefix: prefix, Subnet: e2eSubnet})
	a = mustHost(t, sb, "a")
	b = mustHost(t, sb, "b")
	return a, b, runDatapath(t, flows.Config{Interfaces: []string{prefix + "-*"}})
}

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
	a, b, c := healthSandbox(t, "fmh")

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

// echoServer listens on b for one connection, whose bytes it echoes.
func echoServer(t *testing.T, b *sandbox.Host) net.Listener {
	t.Helper()
	ln, err := b.Listen("tcp4", net.JoinHostPort(b.Addr.String(), "0"))
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	go func() {
		s, err := ln.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		io.Copy(s, s)
	}()
	return ln
}

// echo makes n round trips of 100 bytes from a to an echo server on b,
// and returns the server's port.
func echo(t *testing.T, a, b *sandbox.Host, n int) uint16 {
	t.Helper()
	ln := echoServer(t, b)
	defer ln.Close()
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

// TestEndToEndRTT: the RTT of a path that takes 20 ms, both as the
// handshake RTT seen on TC and as the local sockets' smoothed RTT from
// tcp_probe, is within 10 % of 20 ms, plus what the user-space forwarder
// adds: held against the round trips the client itself measured on the
// same connection (its connect, its exchanges), within 2 ms.
//
// The issue asks for `tc netem delay 20ms`, but this kernel has neither
// netem nor fq or ETF (CONFIG_NET_SCH_NETEM and CONFIG_NET_SCH_FQ unset),
// so internal/delay delays the server's packets in user space instead:
// through a TUN device in b's namespace, written out of b's eth0 20 ms
// after they were read. The delay is on the server's side of the watched
// interfaces, so TC sees the SYN before it and the SYN-ACK after it. The
// forwarder is late by a median of 0.1 to 0.5 ms here, and by tens of ms
// when the machine's other work takes its CPU: the client's own
// measurements include that, a fixed 20 ms would not. Needs root.
func TestEndToEndRTT(t *testing.T) {
	a, b, c := healthSandbox(t, "fmy")

	var aMAC net.HardwareAddr
	if err := a.Do(func() error {
		eth0, err := net.InterfaceByName("eth0")
		if err == nil {
			aMAC = eth0.HardwareAddr
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	const delay = 20 * time.Millisecond
	path, err := delaypath.Start(b, a.Addr, aMAC, delay)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { path.Close() })

	// The path's round trips as the client sees them: its connect's (the
	// handshake) and its exchanges' (write to reply read), the truth
	// flowmap's numbers are held against. They include the forwarder's
	// lateness, which is what makes them wander from 20 ms on a busy
	// machine.
	ln := echoServer(t, b)
	defer ln.Close()
	start := time.Now()
	conn, err := a.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	connect := time.Since(start)
	// 50 exchanges: about 1 s, so each socket is sampled a few times.
	const exchanges = 50
	var sum time.Duration
	buf := make([]byte, 100)
	for range exchanges {
		start := time.Now()
		if _, err := conn.Write(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(conn, buf); err != nil {
			t.Fatal(err)
		}
		sum += time.Since(start)
	}
	exchange := sum / exchanges
	conn.Close()
	if connect < delay || exchange < delay {
		t.Fatalf("connect took %v, an exchange %v: want at least %v: the path does not delay", connect, exchange, delay)
	}

	recs := c.flows(t)
	st := path.Stats()
	tolerance := delay / 10
	t.Logf("path: %d packets written %v late (median; mean %v, at most %v), %d errors; connect took %v, an exchange %v on average",
		st.Packets, st.MedianLate, st.MeanLate, st.MaxLate, st.Errors, connect, exchange)

	flow := toPort(recs, a.Addr, b.Addr, uint16(ln.Addr().(*net.TCPAddr).Port))
	h := health(flow)
	var handshake time.Duration
	for _, r := range flow {
		handshake = max(handshake, r.HandshakeRTT)
	}
	t.Logf("flowmap: handshake RTT %v, smoothed RTT %v over %d samples", handshake, h.RTT(), h.RTTSamples)
	if h.RTTSamples < 2 {
		t.Errorf("%d RTT samples, want one of each socket at least", h.RTTSamples)
	}
	for _, m := range []struct {
		name      string
		got, want time.Duration
	}{{"handshake RTT", handshake, connect}, {"smoothed RTT", h.RTT(), exchange}} {
		if d := m.got - m.want; d < -tolerance || d > tolerance {
			t.Errorf("%s = %v, want %v ± %v (20 ms and the forwarder's lateness, as the client saw it)", m.name, m.got, m.want, tolerance)
		}
	}
}

// tcpTimeouts returns TcpExtTCPTimeouts of h's namespace: the
// retransmission timeouts of its TCP sockets.
func tcpTimeouts(t *testing.T, h *sandbox.Host) uint64 { return tcpExt(t, h, "TCPTimeouts") }

// tcpExt returns the TcpExt counter name of h's namespace
// (/proc/net/netstat).
func tcpExt(t *testing.T, h *sandbox.Host, name string) uint64 {
	t.Helper()
	var b []byte
	if err := h.Do(func() error {
		var err error
		// thread-self: the calling thread is in h's namespace, not the
		// process.
		b, err = os.ReadFile("/proc/thread-self/net/netstat")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	for i := 0; i+1 < len(lines); i += 2 {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) == 0 || names[0] != "TcpExt:" || len(values) != len(names) {
			continue
		}
		for j, n := range names {
			if n == name {
				v, err := strconv.ParseUint(values[j], 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				return v
			}
		}
	}
	t.Fatalf("no TcpExt %s in %s's /proc/net/netstat", name, h.NetNS)
	return 0
}

// TestEndToEndZeroWindow: a server that stops reading fills its receive
// buffer and advertises a zero window; the client's persist timer probes
// it, once each backed-off timeout. flowmap counts the probes' answers on
// the flow, as many as the client's stack sent probes (TcpExtTCPWinProbe)
// but perhaps the last, and none on a flow
// whose server reads, though a fast sender may see a zero window there
// for microseconds. Needs root.
func TestEndToEndZeroWindow(t *testing.T) {
	a, b, c := healthSandbox(t, "fmz")

	okPort, _ := sendTCP(t, a.Dial, b, b.Addr, 256<<10)

	ln, err := b.Listen("tcp4", net.JoinHostPort(b.Addr.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// A small receive buffer, which accepted sockets inherit: it fills
	// with the first few segments.
	if err := setsockopt(ln.(*net.TCPListener), unix.SOL_SOCKET, unix.SO_RCVBUF, 4096); err != nil {
		t.Fatal(err)
	}
	stalled := make(chan net.Conn, 1)
	go func() {
		s, err := ln.Accept()
		if err != nil {
			close(stalled)
			return
		}
		stalled <- s // and never read
	}()
	probes0 := tcpExt(t, a, "TCPWinProbe")
	conn, err := a.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, ok := <-stalled
	if !ok {
		t.Fatal("accept failed")
	}
	defer s.Close()
	// The client writes until its send buffer is full; it then probes.
	go func() {
		buf := make([]byte, 64<<10)
		for {
			if _, err := conn.Write(buf); err != nil {
				return
			}
		}
	}()
	// Two probes: 200 ms and 400 ms on.
	waitFor(t, 10*time.Second, "two window probes", func() bool { return tcpExt(t, a, "TCPWinProbe")-probes0 >= 2 })
	// An abort ends the probes (its RST, to a socket that does not read,
	// is taken all the same).
	conn.(*net.TCPConn).SetLinger(0)
	conn.Close()
	want := tcpExt(t, a, "TCPWinProbe") - probes0

	recs := c.flows(t)
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	// Each probe's answer, but perhaps the last's, which the abort may
	// have beaten.
	if h := health(toPort(recs, a.Addr, b.Addr, port)); h.ZeroWindows == 0 || h.ZeroWindows+1 < want || h.ZeroWindows > want {
		t.Errorf("the stalled flow: %d zero-window probes answered, want %d or one less (TcpExtTCPWinProbe in %s): %+v", h.ZeroWindows, want, a.NetNS, h)
	} else {
		t.Logf("the stalled flow: %d zero-window probes answered of %d sent", h.ZeroWindows, want)
	}
	if h := health(toPort(recs, a.Addr, b.Addr, okPort)); h.ZeroWindows != 0 || h.RTOs != 0 {
		t.Errorf("a flow whose server reads: %+v, want no zero-window probe and no timeout", h)
	}
}

func setsockopt(c syscall.Conn, level, opt, v int) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), level, opt, v) }); err != nil {
		return err
	}
	return serr
}
