package enrich_test

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowmap/flowmap/enrich"
	"github.com/flowmap/flowmap/model"
)

const (
	goodID = "1111111111111111111111111111111111111111111111111111111111111111"
	badID  = "2222222222222222222222222222222222222222222222222222222222222222"
)

func inspectJSON(id, name, ip string) string {
	return fmt.Sprintf(`{"Id":%q,"Name":"/%s","Config":{"Image":"fme-busybox:1","Labels":{"role":%q}},
"State":{"Running":true,"Pid":0},"NetworkSettings":{"Networks":{"bridge":{"IPAddress":%q}}}}`, id, name, name, ip)
}

// quietEvents is an engine's /events that sends no event until the
// request ends.
func quietEvents(w http.ResponseWriter, r *http.Request) {
	w.(http.Flusher).Flush()
	<-r.Context().Done()
}

// serveUnix serves h on a unix socket in a temporary directory.
func serveUnix(t *testing.T, h http.Handler) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "engine.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return path
}

// TestEngineBadInput runs the Docker source against engines that fail:
// it must log, count, and keep naming what it knows.
func TestEngineBadInput(t *testing.T) {
	good := netip.MustParseAddr("198.51.100.70")
	other := netip.MustParseAddr("198.51.100.71")
	tests := []struct {
		name   string
		engine func(t *testing.T) string // returns the socket
		reason string
		named  bool // the good container is named
	}{
		{
			name:   "unreachable",
			engine: func(t *testing.T) string { return filepath.Join(t.TempDir(), "none.sock") },
			reason: "connect",
		},
		{
			name: "malformed list",
			engine: func(t *testing.T) string {
				mux := http.NewServeMux()
				mux.HandleFunc("/containers/json", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, `[{"Id": 5`) })
				mux.HandleFunc("/events", quietEvents)
				return serveUnix(t, mux)
			},
			reason: "decode",
		},
		{
			name: "server error",
			engine: func(t *testing.T) string {
				mux := http.NewServeMux()
				mux.HandleFunc("/containers/json", func(w http.ResponseWriter, r *http.Request) {
					http.Error(w, `{"message":"Internal Server Error"}`, http.StatusInternalServerError)
				})
				mux.HandleFunc("/events", quietEvents)
				return serveUnix(t, mux)
			},
			reason: "api",
		},
		{
			name: "one malformed container",
			engine: func(t *testing.T) string {
				mux := http.NewServeMux()
				mux.HandleFunc("/containers/json", func(w http.ResponseWriter, r *http.Request) {
					fmt.Fprintf(w, `[{"Id":%q},{"Id":%q}]`, goodID, badID)
				})
				mux.HandleFunc("/containers/"+goodID+"/json", func(w http.ResponseWriter, r *http.Request) {
					fmt.Fprint(w, inspectJSON(goodID, "good", good.String()))
				})
				mux.HandleFunc("/containers/"+badID+"/json", func(w http.ResponseWriter, r *http.Request) {
					fmt.Fprint(w, `{"Id": "`+badID+`", "Config": "not an object"}`)
				})
				mux.HandleFunc("/events", quietEvents)
				return serveUnix(t, mux)
			},
			reason: "decode",
			named:  true,
		},
		{
			name: "dying",
			engine: func(t *testing.T) string {
				// The engine answers once, then its events stream dies
				// mid-event and it answers nothing more.
				var dead atomic.Bool
				inspected := make(chan struct{})
				var once sync.Once
				mux := http.NewServeMux()
				mux.HandleFunc("/containers/json", func(w http.ResponseWriter, r *http.Request) {
					if dead.Load() {
						http.Error(w, "", http.StatusServiceUnavailable)
						return
					}
					fmt.Fprintf(w, `[{"Id":%q}]`, goodID)
				})
				mux.HandleFunc("/containers/"+goodID+"/json", func(w http.ResponseWriter, r *http.Request) {
					fmt.Fprint(w, inspectJSON(goodID, "good", good.String()))
					once.Do(func() { close(inspected) })
				})
				mux.HandleFunc("/events", func(w http.ResponseWriter, r *http.Request) {
					if dead.Load() {
						http.Error(w, "", http.StatusServiceUnavailable)
						return
					}
					w.(http.Flusher).Flush()
					select { // die once the list was read
					case <-inspected:
					case <-r.Context().Done():
						return
					}
					fmt.Fprint(w, `{"Type":"container","Action":"sta`)
					w.(http.Flusher).Flush()
					dead.Store(true)
					conn, _, _ := w.(http.Hijacker).Hijack()
					conn.Close()
				})
				return serveUnix(t, mux)
			},
			reason: "events",
			named:  true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs syncBuffer
			logger := slog.New(slog.NewTextHandler(io.MultiWriter(&logs, tWriter{t}), nil))
			inv := startInventory(t, enrich.Config{DockerSocket: tt.engine(t), Logger: logger})
			// The error is counted before the source logs it and before it
			// publishes what it did read, and the inventory rebuilds its
			// caches after that: wait for all three.
			var n float64
			var f model.Flow
			warned := func() bool {
				got := logs.String()
				return strings.Contains(got, "level=WARN") && strings.Contains(got, "source=docker")
			}
			for start := time.Now(); time.Since(start) < 5*time.Second; time.Sleep(20 * time.Millisecond) {
				n = errorCount(t, inv, "docker", tt.reason)
				f = inv.Enrich(model.Record{Src: good, Dst: other, Proto: model.ProtoTCP, DstPort: 80})
				if n > 0 && (!tt.named || f.SrcEndpoint.Name == "good") && warned() {
					break
				}
			}
			if n == 0 {
				t.Fatalf("docker errors{reason=%q} = 0 after 5s, want at least 1 (status %+v)", tt.reason, inv.Status())
			}
			if !warned() {
				t.Errorf("logs = %q, want a warning from the docker source", logs.String())
			}
			// The flow is reported with what is known.
			if tt.named {
				if f.SrcEndpoint.Name != "good" || f.SrcEndpoint.Labels["role"] != "good" {
					t.Errorf("source = %s %q labels %v, want container good", f.SrcEndpoint.Kind, f.SrcEndpoint.Name, f.SrcEndpoint.Labels)
				}
			} else if f.SrcEndpoint.Kind != model.KindExternal || f.SrcEndpoint.Name != good.String() {
				t.Errorf("source = %s %q, want external %s", f.SrcEndpoint.Kind, f.SrcEndpoint.Name, good)
			}
			if f.DstEndpoint.Kind != model.KindExternal || f.DstEndpoint.Name != other.String() {
				t.Errorf("destination = %s %q, want external %s", f.DstEndpoint.Kind, f.DstEndpoint.Name, other)
			}
			for _, st := range inv.Status() {
				if st.Name == "docker" && st.LastError == "" {
					t.Errorf("docker status %+v, want its last error", st)
				}
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestCIDRFile checks that the CIDR file names external addresses, that a
// bad line is logged and counted while the others are kept, and that an
// edit is read again.
func TestCIDRFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cidrs")
	if err := os.WriteFile(path, []byte("203.0.113.0/24 corp network\nnot-a-cidr oops\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	inv := startInventory(t, enrich.Config{CIDRFile: path, Resync: 100 * time.Millisecond, Logger: testLogger(t)})
	addr := netip.MustParseAddr("203.0.113.9")
	if ep, _ := waitNamed(t, inv, addr, 2*time.Second, func(ep model.Endpoint) bool { return ep.Name == "corp network" }); ep.Name != "corp network" || ep.ID != "203.0.113.0/24" || ep.Kind != model.KindExternal {
		t.Fatalf("Resolve(%v) = %s %q %q, want external %q %q", addr, ep.Kind, ep.ID, ep.Name, "203.0.113.0/24", "corp network")
	}
	if n := errorCount(t, inv, "cidr", "parse"); n != 1 {
		t.Errorf("cidr parse errors = %v, want 1", n)
	}
	if err := os.WriteFile(path+".new", []byte("203.0.113.0/25 lab\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil { // as editors and ConfigMaps replace files
		t.Fatal(err)
	}
	if ep, took := waitNamed(t, inv, addr, 3*time.Second, func(ep model.Endpoint) bool { return ep.Name == "lab" }); ep.Name != "lab" {
		t.Fatalf("after the edit, Resolve(%v).Name = %q after %v, want %q", addr, ep.Name, took, "lab")
	}
	if ep := inv.Resolve(netip.MustParseAddr("203.0.113.200"), model.Interface{}); ep.Name != "203.0.113.200" {
		t.Errorf("an address the edited file no longer covers is named %q, want its address", ep.Name)
	}
	if st := inv.Status(); !strings.Contains(fmt.Sprint(st), "cidr") {
		t.Errorf("Status() = %+v, want a cidr source", st)
	}
}
