package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/flowmap/flowmap/sandbox"
)

// load is a kind of traffic from host a to host b.
type load int

const (
	loadTCP   load = iota // one bulk TCP stream
	loadUDP64             // 64-byte UDP payloads, as fast as the sender goes
	loadHTTP              // small HTTP/1.1 requests on keep-alive connections (wrk)
	// loadRR is loadHTTP's exchanges with bytes of no protocol: what the
	// agent costs them without the L7 path.
	loadRR
	// loadHTTPClose is loadHTTP with a connection a request (wrk -H
	// 'Connection: close'), about ten packets a connection: short
	// connections, as health checks and many microservices make.
	loadHTTPClose
	// loadRRClose is loadRR with a connection an exchange, closed by the
	// server as nginx closes loadHTTPClose's: loadHTTPClose without the
	// L7 path.
	loadRRClose
)

var allLoads = []load{loadTCP, loadUDP64, loadRR, loadHTTP, loadRRClose, loadHTTPClose}

// parseLoads reads a comma-separated list of loads by name.
func parseLoads(s string) ([]load, error) {
	var out []load
	for _, name := range strings.Split(s, ",") {
		i := slices.IndexFunc(allLoads, func(l load) bool { return l.String() == strings.TrimSpace(name) })
		if i < 0 {
			return nil, fmt.Errorf("load %q: want one of %v", name, allLoads)
		}
		if !slices.Contains(out, allLoads[i]) {
			out = append(out, allLoads[i])
		}
	}
	return out, nil
}

func (l load) String() string {
	switch l {
	case loadUDP64:
		return "udp-64B"
	case loadHTTP:
		return "http"
	case loadRR:
		return "tcp-rr"
	case loadHTTPClose:
		return "http-close"
	case loadRRClose:
		return "tcp-rr-close"
	}
	return "tcp-bulk"
}

// unit is what the load's throughput is counted in.
func (l load) unit() string {
	switch l {
	case loadUDP64:
		return "Mpkt/s"
	case loadHTTP, loadHTTPClose:
		return "kreq/s"
	case loadRR:
		return "ktrans/s"
	case loadRRClose:
		return "kconn/s"
	}
	return "Gbit/s"
}

// modes returns the modes l is measured under. The HTTP load and its
// baseline are the L7 parsers' and run under TC only, where the agent
// attaches by default: the other hooks' cost is the L4 loads' to tell, and
// a bench of all of them would last past four minutes.
func (l load) modes() []mode {
	if l.exchanges() {
		return []mode{{hook: hookNone}, {hook: hookTC}, {hook: hookTC, agent: true}}
	}
	return modes
}

// exchanges reports whether l is one of the request-response loads.
func (l load) exchanges() bool {
	return l == loadHTTP || l == loadRR || l == loadHTTPClose || l == loadRRClose
}

// short reports whether l opens a connection an exchange.
func (l load) short() bool { return l == loadHTTPClose || l == loadRRClose }

// minRatio is the least throughput with the agent over without that the
// issues ask of l; 0 for none.
func (l load) minRatio() float64 {
	switch l {
	case loadHTTP:
		return 0.95
	case loadHTTPClose:
		return 0.90
	case loadRR, loadRRClose:
		return 0
	}
	return 0.97
}

// udpPayload is the UDP payload length of loadUDP64: frames of 106 bytes
// (Ethernet 14, IPv4 20, UDP 8), 110 on the wire with the FCS.
const udpPayload = 64

const iperfPort = "5201"

// iperfServer runs `iperf3 -s` in h until stop, which kills it by its PID.
type iperfServer struct {
	cmd    *exec.Cmd
	stderr bytes.Buffer
}

func startIperfServer(ctx context.Context, h *sandbox.Host) (*iperfServer, error) {
	s := &iperfServer{}
	s.cmd = h.Command(ctx, "iperf3", "-s", "-B", h.Addr.String(), "-p", iperfPort)
	s.cmd.Stderr = &s.stderr
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start iperf3 server in %s: %w", h.NetNS, err)
	}
	if err := waitListening(h, mustAtoi(iperfPort), func() bool { return s.cmd.ProcessState != nil }); err != nil {
		return nil, errors.Join(fmt.Errorf("iperf3 server: %w: %s", err, s.stderr.String()), s.stop())
	}
	return s, nil
}

// waitListening waits until a TCP socket of h listens on port, or exited
// reports the server gone. Listening is checked by reading the namespace's
// TCP sockets: a probe connection would make iperf3 log an aborted test.
func waitListening(h *sandbox.Host, port int, exited func() bool) error {
	hexPort := fmt.Sprintf(":%04X ", port)
	deadline := time.Now().Add(5 * time.Second)
	for {
		var listening bool
		err := h.Do(func() error {
			b, err := os.ReadFile("/proc/thread-self/net/tcp")
			if err != nil {
				return err
			}
			for _, line := range strings.Split(string(b), "\n") {
				f := strings.Fields(line)
				// local_address, state 0A is LISTEN.
				if len(f) > 3 && strings.HasSuffix(f[1]+" ", hexPort) && f[3] == "0A" {
					listening = true
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("read sockets in %s: %w", h.NetNS, err)
		}
		if listening {
			return nil
		}
		if time.Now().After(deadline) || exited() {
			return fmt.Errorf("not listening on port %d in %s after 5s", port, h.NetNS)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *iperfServer) stop() error {
	s.cmd.Process.Kill()
	s.cmd.Wait() // killed: the error says so
	return nil
}

// iperfResult is the part of `iperf3 -J` the bench reads.
type iperfResult struct {
	End struct {
		SumReceived struct {
			Seconds       float64 `json:"seconds"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

// measure runs l from a to b for d and returns what b received: Gbit/s of
// TCP payload (iperf3), millions of UDP packets per second (measureUDP), or
// thousands of HTTP requests answered per second (measureHTTP).
func measure(ctx context.Context, l load, a, b *sandbox.Host, d time.Duration, httpConns int) (float64, error) {
	switch l {
	case loadUDP64:
		return measureUDP(ctx, a, b, d)
	case loadHTTP:
		return measureHTTP(ctx, a, b, d, httpConns)
	case loadHTTPClose:
		return measureHTTPClose(ctx, a, b, d, httpConns)
	case loadRR:
		return measureRR(ctx, a, b, d, httpConns)
	case loadRRClose:
		return measureRRClose(ctx, a, b, d, httpConns)
	}
	secs := strconv.Itoa(max(1, int(d.Round(time.Second)/time.Second)))
	args := []string{"-c", b.Addr.String(), "-p", iperfPort, "-t", secs, "-J"}
	cmd := a.Command(ctx, "iperf3", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	var res iperfResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil || res.Error != "" || runErr != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, fmt.Errorf("iperf3 %s: %v %s %s", strings.Join(args, " "), runErr, res.Error, stderr.String())
	}
	r := res.End.SumReceived
	if r.Seconds <= 0 {
		return 0, fmt.Errorf("iperf3 %s: no time received", strings.Join(args, " "))
	}
	return r.BitsPerSecond / 1e9, nil
}

func mustAtoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		panic(err)
	}
	return n
}
