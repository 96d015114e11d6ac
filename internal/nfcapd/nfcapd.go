// Package nfcapd runs Debian's nfdump IPFIX collector, nfcapd, for tests,
// and reads what it received back with nfdump: an IPFIX collector that no
// one here wrote.
package nfcapd

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
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
	"github.com/flowmap/flowmap/model"
)

// Record is a flow record as nfdump -o json prints it.
type Record struct {
	Proto    uint8  `json:"proto"`
	Src4     string `json:"src4_addr"`
	Dst4     string `json:"dst4_addr"`
	Src6     string `json:"src6_addr"`
	Dst6     string `json:"dst6_addr"`
	SrcPort  uint16 `json:"src_port"`
	DstPort  uint16 `json:"dst_port"`
	InBytes  uint64 `json:"in_bytes"`
	InPkts   uint64 `json:"in_packets"`
	OutBytes uint64 `json:"out_bytes"`
	OutPkts  uint64 `json:"out_packets"`
	First    string `json:"first"`
	Last     string `json:"last"`
	TCPFlags string `json:"tcp_flags"`
}

// Key returns the record's flow key.
func (r *Record) Key() model.Key {
	src, dst := r.Src4, r.Dst4
	if src == "" {
		src, dst = r.Src6, r.Dst6
	}
	s, _ := netip.ParseAddr(src)
	d, _ := netip.ParseAddr(dst)
	return model.Key{Src: s, Dst: d, Proto: model.Proto(r.Proto), SrcPort: r.SrcPort, DstPort: r.DstPort}
}

// Collector is a running nfcapd.
type Collector struct {
	// Addr is the loopback UDP address it receives on.
	Addr string
	cmd  *exec.Cmd
	dir  string
	done chan error

	mu      sync.Mutex
	domains map[uint32]chan struct{} // marker domains not yet seen
	marker  uint32
}

// Start starts nfcapd on a free loopback UDP port and waits until it is
// up; it fails the test if nfcapd is not installed (apt-get install nfdump)
// and kills it at the test's end.
func Start(t *testing.T) *Collector {
	t.Helper()
	bin := testenv.MustHaveCommand(t, "nfcapd")
	testenv.MustHaveCommand(t, "nfdump")
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen udp: %v", err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	pc.Close()
	dir := t.TempDir()
	// -v -v logs each new exporter (observation domain), which Sync waits
	// for; -t: one file for the test.
	cmd := exec.Command(bin, "-b", "127.0.0.1", "-p", strconv.Itoa(port), "-w", dir, "-t", "3600", "-v", "-v")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatalf("start nfcapd: %v", err)
	}
	c := &Collector{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), cmd: cmd, dir: dir,
		done: make(chan error, 1), domains: map[uint32]chan struct{}{}, marker: 0x7f000000}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			t.Logf("nfcapd: %s", line)
			if strings.HasPrefix(line, "Startup") {
				close(ready)
			}
			if _, d, ok := strings.Cut(line, "Observation domain "); ok {
				d, _, _ = strings.Cut(d, " ")
				n, _ := strconv.ParseUint(d, 10, 32)
				c.mu.Lock()
				if ch := c.domains[uint32(n)]; ch != nil {
					close(ch)
					delete(c.domains, uint32(n))
				}
				c.mu.Unlock()
			}
		}
		c.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
	})
	select {
	case <-ready:
	case err := <-c.done:
		t.Fatalf("nfcapd exited before it started up: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("nfcapd did not start up in 10s")
	}
	return c
}

// Sync returns once nfcapd has processed every message sent to it before:
// it sends a message of a new observation domain, which nfcapd logs, and
// waits for the log line (a socket's datagrams are read in order).
func (c *Collector) Sync(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	c.marker++
	d := c.marker
	seen := make(chan struct{})
	c.domains[d] = seen
	c.mu.Unlock()
	conn, err := net.Dial("udp", c.Addr)
	if err != nil {
		t.Fatalf("dial nfcapd: %v", err)
	}
	defer conn.Close()
	// An IPFIX message of a header alone.
	m := binary.BigEndian.AppendUint16(nil, 10)
	m = binary.BigEndian.AppendUint16(m, 16)
	m = binary.BigEndian.AppendUint32(m, uint32(time.Now().Unix()))
	m = binary.BigEndian.AppendUint32(m, 0)
	m = binary.BigEndian.AppendUint32(m, d)
	if _, err := conn.Write(m); err != nil {
		t.Fatalf("send marker to nfcapd: %v", err)
	}
	select {
	case <-seen:
	case <-time.After(10 * time.Second):
		t.Fatalf("nfcapd did not log observation domain %d in 10s", d)
	}
}

// Records syncs, stops nfcapd, which writes out its file, and reads the
// records back with nfdump.
func (c *Collector) Records(t *testing.T) []Record {
	t.Helper()
	c.Sync(t)
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		t.Fatal("nfcapd still running 10s after SIGTERM")
	}
	files, _ := filepath.Glob(filepath.Join(c.dir, "nfcapd.2*"))
	if len(files) != 1 {
		all, _ := os.ReadDir(c.dir)
		t.Fatalf("nfcapd wrote files %v, want one nfcapd.YYYYMMDDhhmm", all)
	}
	out, err := exec.Command("nfdump", "-r", files[0], "-o", "json").Output()
	if err != nil {
		t.Fatalf("nfdump -r %s: %v", files[0], err)
	}
	if strings.Contains(string(out), "No matching flows") {
		return nil
	}
	var recs []Record
	if err := json.Unmarshal(out, &recs); err != nil {
		t.Fatalf("decode nfdump's json: %v\n%s", err, out)
	}
	return recs
}

func (r Record) String() string {
	return fmt.Sprintf("%v bytes %d/%d packets %d/%d", r.Key(), r.InBytes, r.OutBytes, r.InPkts, r.OutPkts)
}
