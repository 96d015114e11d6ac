// Package collector runs a real OpenTelemetry Collector for tests: the
// one module internal/otelcol builds from the collector's Go modules (the
// OTLP receiver and the file exporter of one release), and reads back what
// it received.
package collector

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flowmap/flowmap/internal/testenv"
)

var build struct {
	once sync.Once
	bin  string
	err  error
}

// Binary builds the collector once per process into the user's cache
// directory, keyed by its sources (go.mod, go.sum, main.go): a later test
// run finds it there, and the Go build cache makes a rebuild a link.
func Binary(t *testing.T) string {
	t.Helper()
	goBin := testenv.MustHaveCommand(t, "go")
	build.once.Do(func() {
		out, err := exec.Command(goBin, "env", "GOMOD").Output()
		if err != nil {
			build.err = fmt.Errorf("go env GOMOD: %w", err)
			return
		}
		src := filepath.Join(filepath.Dir(strings.TrimSpace(string(out))), "internal", "otelcol")
		h := sha256.New()
		for _, f := range []string{"go.mod", "go.sum", "main.go"} {
			b, err := os.ReadFile(filepath.Join(src, f))
			if err != nil {
				build.err = err
				return
			}
			h.Write(b)
		}
		cache, err := os.UserCacheDir()
		if err != nil {
			cache = os.TempDir()
		}
		dir := filepath.Join(cache, "flowmap-otelcol")
		bin := filepath.Join(dir, "otelcol-"+hex.EncodeToString(h.Sum(nil))[:16])
		if _, err := os.Stat(bin); err == nil {
			build.bin = bin
			return
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			build.err = err
			return
		}
		// Built under another name and renamed, so that a concurrent test
		// run never starts half a binary.
		tmp := fmt.Sprintf("%s.%d", bin, os.Getpid())
		cmd := exec.Command(goBin, "build", "-o", tmp, ".")
		cmd.Dir = src
		if out, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("build the collector in %s: %w\n%s", src, err, out)
			return
		}
		build.bin, build.err = bin, os.Rename(tmp, bin)
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.bin
}

// Collector is a running collector: OTLP over gRPC and HTTP in, each
// signal to a file of OTLP JSON lines.
type Collector struct {
	GRPC, HTTP string // HOST:PORT of the receivers
	bin, dir   string
	cmd        *exec.Cmd
	done       chan error
	gen        int // restarts
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Start builds the collector if need be and starts it on free loopback
// ports; it is killed at the test's end.
func Start(t *testing.T) *Collector {
	t.Helper()
	return StartAt(t, freePort(t))
}

// StartAt is Start with the gRPC receiver on grpc, HOST:PORT.
func StartAt(t *testing.T, grpc string) *Collector {
	t.Helper()
	c := &Collector{GRPC: grpc, HTTP: freePort(t), bin: Binary(t), dir: t.TempDir()}
	cfg := fmt.Sprintf(`receivers:
  otlp:
    protocols:
      grpc: {endpoint: %q}
      http: {endpoint: %q}
exporters:
  file/logs: {path: %q, flush_interval: 100ms}
  file/metrics: {path: %q, flush_interval: 100ms}
service:
  telemetry:
    metrics: {level: none}
  pipelines:
    logs: {receivers: [otlp], exporters: [file/logs]}
    metrics: {receivers: [otlp], exporters: [file/metrics]}
`, c.GRPC, c.HTTP, filepath.Join(c.dir, "logs.json"), filepath.Join(c.dir, "metrics.json"))
	if err := os.WriteFile(filepath.Join(c.dir, "config.yaml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	c.start(t)
	return c
}

func (c *Collector) start(t *testing.T) {
	t.Helper()
	cmd := exec.Command(c.bin, "--config", filepath.Join(c.dir, "config.yaml"))
	out, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the collector: %v", err)
	}
	c.cmd, c.done = cmd, make(chan error, 1)
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		var once sync.Once
		for sc.Scan() {
			if strings.Contains(sc.Text(), "Everything is ready") {
				once.Do(func() { close(ready) })
			}
			if strings.Contains(sc.Text(), "\terror\t") || strings.Contains(sc.Text(), "\twarn\t") {
				t.Logf("collector: %s", sc.Text())
			}
		}
		c.done <- cmd.Wait()
	}()
	t.Cleanup(func() { cmd.Process.Kill() })
	select {
	case <-ready:
	case err := <-c.done:
		t.Fatalf("the collector exited before it was ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the collector not ready after 30s")
	}
}

// Stop stops the collector with SIGTERM; its file exporters flush.
func (c *Collector) Stop(t *testing.T) {
	t.Helper()
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-c.done:
		if err != nil {
			t.Errorf("the collector exited with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the collector still running 30s after SIGTERM")
	}
}

// Restart starts a stopped collector again, on the same ports.
// What it wrote before is kept: its file exporter truncates its files.
func (c *Collector) Restart(t *testing.T) {
	t.Helper()
	c.gen++
	for _, f := range []string{"logs", "metrics"} {
		old := filepath.Join(c.dir, f+".json")
		if err := os.Rename(old, filepath.Join(c.dir, fmt.Sprintf("%s.%d.json", f, c.gen))); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	c.start(t)
}

// Record is a log record as the collector received it, with its
// resource's attributes.
type Record struct {
	Resource  map[string]any
	Scope     string
	EventName string
	Time      time.Time
	Attrs     map[string]any
}

type anyValue struct {
	StringValue *string  `json:"stringValue"`
	IntValue    *string  `json:"intValue"`
	DoubleValue *float64 `json:"doubleValue"`
	BoolValue   *bool    `json:"boolValue"`
}

type keyValue struct {
	Key   string   `json:"key"`
	Value anyValue `json:"value"`
}

func attrs(kvs []keyValue) map[string]any {
	m := make(map[string]any, len(kvs))
	for _, kv := range kvs {
		switch v := kv.Value; {
		case v.StringValue != nil:
			m[kv.Key] = *v.StringValue
		case v.IntValue != nil:
			n, _ := strconv.ParseInt(*v.IntValue, 10, 64)
			m[kv.Key] = n
		case v.DoubleValue != nil:
			m[kv.Key] = *v.DoubleValue
		case v.BoolValue != nil:
			m[kv.Key] = *v.BoolValue
		}
	}
	return m
}

// Logs returns the log records the collector wrote so far (its file
// exporter flushes every 100ms, and when it stops).
func (c *Collector) Logs(t *testing.T) []Record {
	t.Helper()
	var out []Record
	for _, line := range c.lines(t, "logs") {
		var req struct {
			ResourceLogs []struct {
				Resource struct {
					Attributes []keyValue `json:"attributes"`
				} `json:"resource"`
				ScopeLogs []struct {
					Scope struct {
						Name string `json:"name"`
					} `json:"scope"`
					LogRecords []struct {
						TimeUnixNano string     `json:"timeUnixNano"`
						EventName    string     `json:"eventName"`
						Attributes   []keyValue `json:"attributes"`
					} `json:"logRecords"`
				} `json:"scopeLogs"`
			} `json:"resourceLogs"`
		}
		if err := json.Unmarshal(line, &req); err != nil {
			// The last line may be half written.
			continue
		}
		for _, rl := range req.ResourceLogs {
			res := attrs(rl.Resource.Attributes)
			for _, sl := range rl.ScopeLogs {
				for _, lr := range sl.LogRecords {
					ns, _ := strconv.ParseInt(lr.TimeUnixNano, 10, 64)
					out = append(out, Record{Resource: res, Scope: sl.Scope.Name, EventName: lr.EventName,
						Time: time.Unix(0, ns), Attrs: attrs(lr.Attributes)})
				}
			}
		}
	}
	return out
}

// MetricsJSON returns the metrics file's lines, each an OTLP JSON
// ExportMetricsServiceRequest.
func (c *Collector) MetricsJSON(t *testing.T) [][]byte {
	t.Helper()
	return c.lines(t, "metrics")
}

// lines returns the lines of a signal's files, the oldest first.
func (c *Collector) lines(t *testing.T, signal string) [][]byte {
	t.Helper()
	var files []string
	for g := 1; g <= c.gen; g++ {
		files = append(files, filepath.Join(c.dir, fmt.Sprintf("%s.%d.json", signal, g)))
	}
	files = append(files, filepath.Join(c.dir, signal+".json"))
	var out [][]byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range bytes.Split(b, []byte("\n")) {
			if len(bytes.TrimSpace(line)) > 0 {
				out = append(out, line)
			}
		}
	}
	return out
}
