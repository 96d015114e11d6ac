package flows_test

import (
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowmap/flowmap/flows"
	"github.com/flowmap/flowmap/internal/sandboxtest"
	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/sandbox"
)

// listenOverflows reads TcpExt ListenOverflows, the kernel's count of
// connections a full accept queue turned away, in h's namespace.
func listenOverflows(t *testing.T, h *sandbox.Host) uint64 {
	t.Helper()
	var n uint64
	err := h.Do(func() error {
		b, err := os.ReadFile("/proc/thread-self/net/netstat")
		if err != nil {
			return err
		}
		lines := strings.Split(string(b), "\n")
		for i := 0; i+1 < len(lines); i += 2 {
			names, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
			for j := range names {
				if names[0] == "TcpExt:" && names[j] == "ListenOverflows" && j < len(vals) {
					n, err = strconv.ParseUint(vals[j], 10, 64)
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("read ListenOverflows: %v", err)
	}
	return n
}

// TestEndToEndAcceptQueue: a server whose accept queue is full (never accepting) turns away handshakes; the kernel drops the ACKs that
// would complete them, and flowmap counts those under the kernel's reason,
// TCP_LISTEN_OVERFLOW, on the flows of the clients turned away. (6.18
// turns away a SYN to a full queue with consume_skb, not as a drop: only
// handshakes answered before the queue filled end in these drops. Their
// clients had the SYN-ACK: the flow counts them established.) Needs root
// and iptables.
func TestEndToEndAcceptQueue(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	if err := sandbox.Cleanup("fmq"); err != nil {
		t.Fatalf("remove leftovers: %v", err)
	}
	sb := sandboxtest.New(t, sandbox.Options{Prefix: "fmq", Subnet: e2eSubnet})
	a := mustHost(t, sb, "a")
	b := mustHost(t, sb, "b")
	c := runDatapath(t, flows.Config{Interfaces: []string{"fmq-*"}})

	// The queue holds backlog+1 connections: backlog are made first, one
	// by one. Then as many clients make theirs while a DROP rule holds
	// back their ACKs (each on the SYN queue, answered, the queue not yet
	// full); once the rule is gone, their ACKs (again, at the server's
	// SYN-ACK retransmission) find the queue full, but the first's.
	const backlog = 4
	var port int
	err := b.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		t.Cleanup(func() { unix.Close(fd) })
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: b.Addr.As4()}); err != nil {
			return err
		}
		if err := unix.Listen(fd, backlog); err != nil {
			return err
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			return err
		}
		port = sa.(*unix.SockaddrInet4).Port
		return nil
	})
	if err != nil {
		t.Fatalf("listen with backlog %d: %v", backlog, err)
	}
	before := listenOverflows(t, b)
	var mu sync.Mutex
	var conns []net.Conn
	for range backlog {
		conn, err := a.Dial("tcp4", net.JoinHostPort(b.Addr.String(), strconv.Itoa(port)))
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		conns = append(conns, conn)
	}
	const clients = backlog
	ackRule := []string{"INPUT", "-p", "tcp", "--dport", strconv.Itoa(port), "--tcp-flags", "SYN,ACK,FIN,RST", "ACK", "-j", "DROP"}
	run(t, b, "iptables", append([]string{"-I"}, ackRule...)...)
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			d := net.Dialer{Timeout: 1500 * time.Millisecond}
			var conn net.Conn
			a.Do(func() error {
				var err error
				conn, err = d.Dial("tcp4", net.JoinHostPort(b.Addr.String(), strconv.Itoa(port)))
				return err
			})
			if conn != nil {
				mu.Lock()
				conns = append(conns, conn)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	run(t, b, "iptables", append([]string{"-D"}, ackRule...)...)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	waitFor(t, 10*time.Second, "the kernel to count listen overflows", func() bool { return listenOverflows(t, b) > before })

	recs := c.flows(t)
	h := health(toPort(recs, a.Addr, b.Addr, uint16(port)))
	if h.Drops["TCP_LISTEN_OVERFLOW"] == 0 {
		t.Errorf("%d clients to a full accept queue (%d listen overflows): drops %v, want some TCP_LISTEN_OVERFLOW",
			clients, listenOverflows(t, b)-before, h.Drops)
	}
	t.Logf("health %+v; kernel ListenOverflows +%d", h, listenOverflows(t, b)-before)
}
