package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/flowmap/flowmap/internal/sandbox"
)

// load is a kind of traffic from host a to host b.
type load int

const (
	loadTCP   load = iota // one bulk TCP stream
	loadUDP64             // 64-byte UDP payloads, as fast as the sender goes
)

var loads = []load{loadTCP, loadUDP64}

func (l load) String() string {
	if l == loadUDP64 {
		return "udp-64B"
	}
	return "tcp-bulk"
}

// unit is what the load's throughput is counted in.
func (l load) unit() string {
	if l == loadUDP64 {
		return "Mpkt/s"
	}
	return "Gbit/s"
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
	// Listening is checked by reading the namespace's TCP sockets: a probe
	// connection would make the server log an aborted test.
	hexPort := fmt.Sprintf(":%04X ", mustAtoi(iperfPort))
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
			return nil, errors.Join(fmt.Errorf("read sockets in %s: %w", h.NetNS, err), s.stop())
		}
		if listening {
			return s, nil
		}
		if time.Now().After(deadline) || s.cmd.ProcessState != nil {
			return nil, errors.Join(fmt.Errorf("iperf3 server in %s not listening after 5s: %s", h.NetNS, s.stderr.String()), s.stop())
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
// TCP payload (iperf3), or millions of UDP packets per second (measureUDP).
func measure(ctx context.Context, l load, a, b *sandbox.Host, d time.Duration) (float64, error) {
	if l == loadUDP64 {
		return measureUDP(ctx, a, b, d)
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
