package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/flowmap/flowmap/sandbox"
)

// httpPort is where the HTTP server of loadHTTP listens.
const httpPort = 8080

// nginxConf runs nginx in the foreground, one process, as a small API
// answers: every request 200 with a short JSON body, no access log, and
// keep-alive connections kept for the whole load.
const nginxConf = `daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
	access_log off;
	keepalive_requests 100000000;
	keepalive_timeout 60s;
	server {
		listen %[2]s backlog=4096;
		location / {
			default_type application/json;
			return 200 '{"ok":true}\n';
		}
	}
}
`

// httpServer is nginx, from the distribution, in a host.
type httpServer struct {
	cmd    *exec.Cmd
	stderr bytes.Buffer
	done   chan error
}

func startHTTPServer(ctx context.Context, h *sandbox.Host, dir string) (*httpServer, error) {
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, nginxConf, dir, netAddr(h, httpPort)), 0o644); err != nil {
		return nil, fmt.Errorf("write nginx config: %w", err)
	}
	s := &httpServer{done: make(chan error, 1)}
	s.cmd = h.Command(ctx, "nginx", "-p", dir, "-c", conf, "-e", "stderr")
	s.cmd.Stderr = &s.stderr
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start nginx in %s: %w", h.NetNS, err)
	}
	go func() { s.done <- s.cmd.Wait() }()
	exited := func() bool {
		select {
		case err := <-s.done:
			s.done <- err
			return true
		default:
			return false
		}
	}
	if err := waitListening(h, httpPort, exited); err != nil {
		return nil, errors.Join(fmt.Errorf("nginx: %w: %s", err, s.stderr.String()), s.stop())
	}
	return s, nil
}

func (s *httpServer) stop() error {
	s.cmd.Process.Kill()
	<-s.done // killed: the error says so
	return nil
}

func netAddr(h *sandbox.Host, port int) string {
	return net.JoinHostPort(h.Addr.String(), strconv.Itoa(port))
}

var wrkRate = regexp.MustCompile(`(?m)^Requests/sec:\s+([0-9.]+)`)

// measureHTTP runs wrk in a, from one thread with conns keep-alive
// connections, against b's HTTP server for d, and returns the
// thousands of requests per second it got answered. Non-2xx answers and
// socket errors fail the measurement: a load that fails is no throughput.
func measureHTTP(ctx context.Context, a, b *sandbox.Host, d time.Duration, conns int) (float64, error) {
	return runWrk(ctx, a, b, d, conns)
}

// measureHTTPClose is measureHTTP with a connection a request, which
// nginx closes after its response.
func measureHTTPClose(ctx context.Context, a, b *sandbox.Host, d time.Duration, conns int) (float64, error) {
	return runWrk(ctx, a, b, d, conns, "-H", "Connection: close")
}

func runWrk(ctx context.Context, a, b *sandbox.Host, d time.Duration, conns int, extra ...string) (float64, error) {
	secs := strconv.Itoa(max(1, int(d.Round(time.Second)/time.Second)))
	args := append([]string{"-t", "1", "-c", strconv.Itoa(conns), "-d", secs + "s"}, extra...)
	args = append(args, "http://"+netAddr(b, httpPort)+"/api/items?id=42")
	cmd := a.Command(ctx, "wrk", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, fmt.Errorf("wrk %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	out := stdout.String()
	if strings.Contains(out, "Non-2xx") || strings.Contains(out, "Socket errors") {
		return 0, fmt.Errorf("wrk %s: errors:\n%s", strings.Join(args, " "), out)
	}
	m := wrkRate.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("wrk %s: no Requests/sec in:\n%s", strings.Join(args, " "), out)
	}
	rate, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, fmt.Errorf("wrk %s: parse %q: %w", strings.Join(args, " "), m[1], err)
	}
	return rate / 1e3, nil
}

// rrPort is where the request-response server of loadRR listens.
const rrPort = 8081

// rrSize is the size of loadRR's requests and responses: about an HTTP
// request's and response's of loadHTTP, in bytes that no L7 parser takes
// for a protocol (zeros).
const rrSize = 96

// rrClosePort is where the server of loadRRClose listens.
const rrClosePort = 8082

// startRRServer answers every rrSize bytes read on a connection to h's
// port with rrSize bytes, until stop; with once, it closes the connection
// after its first answer.
func startRRServer(h *sandbox.Host, port int, once bool) (stop func(), err error) {
	ln, err := h.Listen("tcp4", netAddr(h, port))
	if err != nil {
		return nil, fmt.Errorf("listen in %s: %w", h.NetNS, err)
	}
	var conns sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer conns.Done()
				defer c.Close()
				buf := make([]byte, rrSize)
				for {
					if _, err := io.ReadFull(c, buf); err != nil {
						return
					}
					if _, err := c.Write(buf); err != nil || once {
						return
					}
				}
			}()
		}
	}()
	return func() { ln.Close(); conns.Wait() }, nil
}

// measureRR runs conns connections from a to b's request-response server
// for d, each sending a request and reading its response in turn, as
// wrk's do, and returns the thousands of exchanges per second.
func measureRR(ctx context.Context, a, b *sandbox.Host, d time.Duration, conns int) (float64, error) {
	cs := make([]net.Conn, conns)
	defer func() {
		for _, c := range cs {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i := range cs {
		c, err := a.DialContext(ctx, "tcp4", netAddr(b, rrPort))
		if err != nil {
			return 0, fmt.Errorf("dial %s from %s: %w", netAddr(b, rrPort), a.NetNS, err)
		}
		cs[i] = c
	}
	start := time.Now()
	end := start.Add(d)
	counts := make([]int, conns)
	errs := make([]error, conns)
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Go(func() {
			buf := make([]byte, rrSize)
			for time.Now().Before(end) && ctx.Err() == nil {
				if _, err := c.Write(buf); err != nil {
					errs[i] = err
					return
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					errs[i] = err
					return
				}
				counts[i]++
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := errors.Join(append(errs, ctx.Err())...); err != nil {
		return 0, fmt.Errorf("request-response to %s: %w", netAddr(b, rrPort), err)
	}
	n := 0
	for _, c := range counts {
		n += c
	}
	return float64(n) / elapsed.Seconds() / 1e3, nil
}

// measureRRClose runs conns clients from a to b's rrClosePort for d, each
// opening a connection, sending a request, reading its response and the
// server's close, in turn; and returns the thousands of connections per
// second. Each client is a goroutine on a thread of its own in a's
// namespace, where its sockets are made.
func measureRRClose(ctx context.Context, a, b *sandbox.Host, d time.Duration, conns int) (float64, error) {
	addr := netAddr(b, rrClosePort)
	start := time.Now()
	end := start.Add(d)
	counts := make([]int, conns)
	errs := make([]error, conns)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Go(func() {
			errs[i] = a.Do(func() error {
				buf := make([]byte, rrSize)
				var dialer net.Dialer
				for time.Now().Before(end) && ctx.Err() == nil {
					c, err := dialer.DialContext(ctx, "tcp4", addr)
					if err != nil {
						return err
					}
					_, err = c.Write(buf)
					if err == nil {
						_, err = io.ReadFull(c, buf)
					}
					if err == nil {
						// The server's close.
						if _, rerr := c.Read(buf[:1]); rerr != io.EOF {
							err = fmt.Errorf("read after the response: %v, want EOF", rerr)
						}
					}
					c.Close()
					if err != nil {
						return err
					}
					counts[i]++
				}
				return nil
			})
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := errors.Join(append(errs, ctx.Err())...); err != nil {
		return 0, fmt.Errorf("connections to %s: %w", addr, err)
	}
	n := 0
	for _, c := range counts {
		n += c
	}
	return float64(n) / elapsed.Seconds() / 1e3, nil
}
