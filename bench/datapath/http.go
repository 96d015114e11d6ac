package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/flowmap/flowmap/sandbox"
)

// httpPort is where the HTTP server of loadHTTP listens.
const httpPort = 8080

// httpServer is a Go HTTP server in a host: every request is answered 200
// with a short body, as a small API call is, so that the load is the
// request rate of short messages the L7 parsers read.
type httpServer struct {
	srv  *http.Server
	done chan error
}

func startHTTPServer(h *sandbox.Host) (*httpServer, error) {
	ln, err := h.Listen("tcp4", netAddr(h, httpPort))
	if err != nil {
		return nil, fmt.Errorf("listen in %s: %w", h.NetNS, err)
	}
	body := []byte(`{"ok":true}` + "\n")
	s := &httpServer{
		srv: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Write(body)
		})},
		done: make(chan error, 1),
	}
	go func() { s.done <- s.srv.Serve(ln) }()
	return s, nil
}

func (s *httpServer) stop() error {
	s.srv.Close()
	if err := <-s.done; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve http: %w", err)
	}
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
	secs := strconv.Itoa(max(1, int(d.Round(time.Second)/time.Second)))
	args := []string{"-t", "1", "-c", strconv.Itoa(conns), "-d", secs + "s", "http://" + netAddr(b, httpPort) + "/api/items?id=42"}
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

// startRRServer answers every rrSize bytes read on a connection to h's
// rrPort with rrSize bytes, until stop.
func startRRServer(h *sandbox.Host) (stop func(), err error) {
	ln, err := h.Listen("tcp4", netAddr(h, rrPort))
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
					if _, err := c.Write(buf); err != nil {
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
