// Package browser drives a real headless Chromium for the live map's tests
// (topology/web, cmd/flowmap) through chromedp, and keeps what the page
// logged: console errors, failed loads and uncaught exceptions, which a test
// fails on.
package browser

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/flowmap/flowmap/internal/testenv"
)

// Page is one tab of a headless Chromium.
type Page struct {
	Ctx context.Context

	mu     sync.Mutex
	errors []string
}

// New starts a headless Chromium (Debian's chromium package) for the test,
// stopped by its cleanup. It fails the test if chromium is missing.
func New(t testing.TB) *Page {
	t.Helper()
	bin := testenv.MustHaveCommand(t, "chromium")
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin),
		chromedp.NoSandbox, // as root, Chromium's sandbox refuses to start
		chromedp.WindowSize(1400, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	p := &Page{}
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithListener(p.listen))
	p.Ctx = ctx
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	// The first Run starts the browser, which lives as long as ctx: no
	// timeout on it.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium (%s): %v", bin, err)
	}
	return p
}

// listen keeps the console's errors and the page's exceptions.
func (p *Page) listen(ev any) {
	switch ev := ev.(type) {
	case *runtime.EventConsoleAPICalled:
		if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeAssert {
			var args []string
			for _, a := range ev.Args {
				if len(a.Value) > 0 {
					args = append(args, string(a.Value))
				} else {
					args = append(args, a.Description)
				}
			}
			p.record("console." + string(ev.Type) + ": " + strings.Join(args, " "))
		}
	case *runtime.EventExceptionThrown:
		d := ev.ExceptionDetails
		msg := d.Text
		if d.Exception != nil {
			msg += " " + d.Exception.Description
		}
		p.record(fmt.Sprintf("exception: %s at %s:%d", msg, d.URL, d.LineNumber))
	case *cdplog.EventEntryAdded:
		if ev.Entry.Level == cdplog.EntryLevelError {
			p.record("log: " + ev.Entry.Text + " " + ev.Entry.URL)
		}
	}
}

func (p *Page) record(s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.errors = append(p.errors, s)
}

// Errors returns the console errors, failed loads and exceptions so far.
func (p *Page) Errors() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.errors...)
}

// Do runs chromedp actions, failing the test on an error.
func (p *Page) Do(t testing.TB, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(p.Ctx, time.Minute)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatalf("%s: %v (page errors: %q)", what, err, p.Errors())
	}
}

// Eval evaluates a JavaScript expression and returns its value, decoded as
// T; a promise is awaited.
func Eval[T any](t testing.TB, p *Page, expr string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(p.Ctx, time.Minute)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("evaluate %s: %v (page errors: %q)", expr, err, p.Errors())
	}
	return v
}

// Wait polls cond, a JavaScript expression, until it is true, and fails the
// test with what describe (another expression) says if it is not within d.
// Chromium polls, on animation frames: the test does not sleep.
func (p *Page) Wait(t testing.TB, what, cond, describe string, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(p.Ctx, d+5*time.Second)
	defer cancel()
	ok, err := chromedp.Run(ctx, chromedp.Poll[bool](cond, chromedp.WithPollingTimeout(d)))
	if err != nil || !ok {
		got, _ := chromedp.Run(p.Ctx, chromedp.Evaluate[any](describe))
		t.Fatalf("%s: not within %s (%v): %s = %v (page errors: %q)", what, d, err, describe, got, p.Errors())
	}
}
