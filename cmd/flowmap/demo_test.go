package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flowmap/flowmap/internal/testenv"
)

// TestDemoFlags checks the demo's flags: by default it runs until
// interrupted with the agent draining every second, and an --interval
// given is kept even when it is the agent's default.
func TestDemoFlags(t *testing.T) {
	for _, tc := range []struct {
		name         string
		args         []string
		wantDuration time.Duration
		wantInterval time.Duration
		wantErr      string
	}{
		{name: "default", wantDuration: 0, wantInterval: time.Second},
		{name: "duration", args: []string{"--duration=30s"}, wantDuration: 30 * time.Second, wantInterval: time.Second},
		{name: "interval", args: []string{"--interval=2s"}, wantInterval: 2 * time.Second},
		{name: "interval the agent's default", args: []string{"--interval=5s"}, wantInterval: 5 * time.Second},
		{name: "interval too short", args: []string{"--interval=10ms"}, wantErr: "--interval=10ms"},
		{name: "negative duration", args: []string{"--duration=-1s"}, wantErr: "--duration=-1s"},
		{name: "argument", args: []string{"now"}, wantErr: `unexpected argument "now"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := parseDemoFlags(tc.args, io.Discard)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parseDemoFlags(%q) = %v, want an error holding %q", tc.args, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseDemoFlags(%q): %v", tc.args, err)
			}
			if d.duration != tc.wantDuration || d.agent.cfg.Interval != tc.wantInterval {
				t.Errorf("parseDemoFlags(%q): duration %s, interval %s; want %s, %s",
					tc.args, d.duration, d.agent.cfg.Interval, tc.wantDuration, tc.wantInterval)
			}
			if got, want := strings.Join(d.agent.cfg.Interfaces, ","), demoPrefix+"-*"; got != want {
				t.Errorf("parseDemoFlags(%q): interfaces %q, want %q", tc.args, got, want)
			}
		})
	}
}

// TestDemo runs `flowmap demo` as `make demo` does, until interrupted: it
// prints the live map's address, the map is served there while the shop
// runs, and on the interrupt the demo removes its sandbox and returns nil.
func TestDemo(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	listen := freeAddr(t)
	out := t.TempDir()
	ctx, interrupt := context.WithCancel(context.Background())
	defer interrupt()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"demo", "--listen=" + listen, "--out=" + out}, pw, os.Stderr)
		pw.Close()
	}()
	// The demo's output, line by line; the map's address once it says it.
	lines := make(chan string, 1024)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	mapRE := regexp.MustCompile(`^The live map: (http://\S+/) `)
	var printed []string
	var mapURL string
	timeout := time.After(2 * time.Minute)
	for mapURL == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the demo ended (%v) before printing the map's address:\n%s", <-done, strings.Join(printed, "\n"))
			}
			printed = append(printed, l)
			if m := mapRE.FindStringSubmatch(l); m != nil {
				mapURL = m[1]
			}
		case <-timeout:
			t.Fatalf("after 2m, the demo printed no map address:\n%s", strings.Join(printed, "\n"))
		}
	}
	if want := "http://" + listen + "/"; mapURL != want {
		t.Errorf("the demo printed the map at %s, want %s", mapURL, want)
	}
	// The broken dependencies, at a glance in the table's health column:
	// reviews refuses web's connections, ratings' DROP rule times them
	// out and drops their SYNs.
	for _, w := range []struct{ server, health string }{
		{"reviews", "refused"}, {"ratings", "timeout"}, {"ratings", "drop:NETFILTER_DROP"},
	} {
		if !slices.ContainsFunc(printed, func(l string) bool {
			f := strings.Fields(l)
			return len(f) > 2 && f[0] == "web" && f[1] == w.server && strings.Contains(l, w.health)
		}) {
			t.Errorf("the demo's table has no web → %s row with %q:\n%s", w.server, w.health, strings.Join(printed, "\n"))
		}
	}
	for _, f := range []string{"topology.json"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("before the map's address, the demo wrote no %s: %v", f, err)
		}
	}
	if page := string(httpGet(t, mapURL)); !strings.Contains(page, "<title>") {
		t.Errorf("GET %s: %.200q, want the page", mapURL, page)
	}
	// The shop keeps shopping after the address: the graph's last minute
	// grows.
	before := getGraph(t, mapURL, "workload", "1m")
	eventually(t, 15*time.Second, "the shop's traffic to go on after the address", func() (bool, string) {
		after := getGraph(t, mapURL, "workload", "1m")
		var b, a uint64
		for _, e := range before.Edges {
			b += e.Bytes()
		}
		for _, e := range after.Edges {
			a += e.Bytes()
		}
		return after.Window.End.After(before.Window.End) && a != b && len(after.Edges) >= len(before.Edges),
			fmt.Sprintf("%d edges, %d B in the last minute, then %d edges, %d B", len(before.Edges), b, len(after.Edges), a)
	})

	interrupt()
	go func() {
		for range lines {
		}
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the demo, interrupted: %v, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the demo did not end 30s after the interrupt")
	}
	if ifs, err := net.Interfaces(); err == nil {
		for _, i := range ifs {
			if strings.HasPrefix(i.Name, demoPrefix) {
				t.Errorf("after the demo, interface %s is left", i.Name)
			}
		}
	}
	if names, err := filepath.Glob("/run/netns/" + demoPrefix + "-*"); err != nil || len(names) > 0 {
		t.Errorf("after the demo, namespaces %q are left (%v)", names, err)
	}
	if ln, err := net.Listen("tcp", listen); err != nil {
		t.Errorf("after the demo, %s is still taken: %v", listen, err)
	} else {
		ln.Close()
	}
}
