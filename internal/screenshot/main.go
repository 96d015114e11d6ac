// Command screenshot takes the README's picture of the live map: it runs
// `flowmap demo` until the demo prints the map's address, opens the map in
// headless Chromium (Debian's chromium) once it has drawn the shop, writes
// a PNG of it, and interrupts the demo, which removes its sandbox. Root, as
// the demo. `make screenshot` runs it:
//
//	go build -o bin/flowmap ./cmd/flowmap
//	go run ./internal/screenshot -flowmap bin/flowmap -o docs/livemap.png
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"syscall"
	"time"

	"github.com/chromedp/chromedp"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "screenshot:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	bin := flag.String("flowmap", "bin/flowmap", "the flowmap binary whose demo to picture")
	out := flag.String("o", "docs/livemap.png", "the PNG to write")
	view := flag.String("view", "window=1m", "the map's view, as the page's URL hash holds it")
	width := flag.Int("width", 1400, "the window's width, CSS pixels")
	height := flag.Int("height", 820, "the window's height, CSS pixels")
	timeout := flag.Duration("timeout", 2*time.Minute, "how long to wait for the demo and the map")
	flag.Parse()
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		return fmt.Errorf("find chromium (apt-get install chromium): %w", err)
	}
	listen, err := freeAddr()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "flowmap-screenshot")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	url, stopDemo, err := startDemo(ctx, *bin, "demo", "--listen="+listen, "--out="+dir)
	if err != nil {
		return err
	}
	png, err := capture(ctx, chromium, url+"#"+*view, *width, *height)
	if serr := stopDemo(); err == nil {
		err = serr
	}
	if err != nil {
		return err
	}
	if err := os.WriteFile(*out, png, 0o644); err != nil {
		return err
	}
	fmt.Printf("wrote %s (%d bytes)\n", *out, len(png))
	return nil
}

// mapLine is the demo's line that gives the live map's address.
var mapLine = regexp.MustCompile(`^The live map: (http://\S+/) `)

// startDemo starts the demo and returns the map's address once the demo
// has printed it, and a func that interrupts the demo and waits for it to
// clean up.
func startDemo(ctx context.Context, bin string, args ...string) (string, func() error, error) {
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("start %s: %w", bin, err)
	}
	done := make(chan error, 1)
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			fmt.Println("demo:", sc.Text())
			if m := mapLine.FindStringSubmatch(sc.Text()); m != nil {
				found <- m[1]
			}
		}
		io.Copy(io.Discard, stdout)
		done <- cmd.Wait()
	}()
	stop := func() error {
		cmd.Process.Signal(os.Interrupt)
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("demo: %w", err)
			}
			return nil
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
			return errors.New("demo: still running 30s after the interrupt: killed")
		}
	}
	select {
	case u := <-found:
		return u, stop, nil
	case err := <-done:
		return "", nil, fmt.Errorf("demo ended before printing the map's address: %v", err)
	case <-ctx.Done():
		stop()
		return "", nil, fmt.Errorf("wait for the demo's map: %w", ctx.Err())
	}
}

// capture opens url in headless Chromium and returns a PNG of the page
// once the map has drawn the shop and refreshed once.
func capture(ctx context.Context, chromium, url string, width, height int) ([]byte, error) {
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox, // as root, Chromium's sandbox refuses to start
		chromedp.WindowSize(width, height),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelAlloc()
	bctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	err := chromedp.Do(bctx,
		chromedp.EmulateViewport(int64(width), int64(height)),
		chromedp.Navigate(url),
		// The shop: client, web, catalog, orders, db, cache, payments.
		chromedp.Poll[chromedp.Void](`flowmap.ready && flowmap.refreshes >= 2 && flowmap.cy.nodes().filter(n => !n.isParent()).length >= 7`,
			chromedp.WithPollingTimeout(time.Minute)),
		chromedp.Evaluate[chromedp.Void](`void flowmap.cy.fit(undefined, 30)`),
	)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", url, err)
	}
	png, err := chromedp.Run(bctx, chromedp.CaptureScreenshot())
	if err != nil {
		return nil, fmt.Errorf("picture %s: %w", url, err)
	}
	return png, nil
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
