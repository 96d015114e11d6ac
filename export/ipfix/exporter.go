package ipfix

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"time"

	"github.com/flowmap/flowmap/export"
)

// Defaults of Options.
const (
	DefaultTemplateInterval = 10 * time.Minute
	DefaultUDPMessage       = 1400
	DefaultStreamMessage    = 65535
)

// Options configures an Exporter.
type Options struct {
	// URL is where the collector listens: udp://HOST:PORT, tcp://HOST:PORT
	// or tls://HOST:PORT (TCP with TLS; TLS configures it, nil takes the
	// system's roots).
	URL string
	TLS *tls.Config
	// Domain is the observation domain ID of the messages.
	Domain uint32
	// MaxMessage is the size of a message at most; the defaults are 1400
	// bytes on UDP (no fragments on an Ethernet path) and 65535 on TCP.
	MaxMessage int
	// Over UDP the templates lead the first message and are sent again
	// every TemplateInterval (RFC 7011 section 8.4; the default is 10
	// minutes, RFC 6728's templateRefreshTimeout) and, if TemplateMessages
	// is above 0, every TemplateMessages messages. Over TCP they are sent
	// once, at the start of each connection (section 8.3).
	TemplateInterval time.Duration
	TemplateMessages int
	// Now is the clock of the messages' export times; nil is time.Now.
	Now func() time.Time
}

// Exporter sends flows to an IPFIX collector. It is an export.Exporter;
// its Export is not to be called concurrently.
type Exporter struct {
	network, addr string
	opts          Options
	enc           *encoder
	dialer        net.Dialer

	mu   sync.Mutex
	conn net.Conn
	// templated is when the templates were last sent on conn (UDP), and
	// sinceTemplates the messages since.
	templated      time.Time
	sinceTemplates int
	msgs           [][]byte
}

// New returns an exporter to the collector at opts.URL; it connects at the
// first Export, and again after an error.
func New(opts Options) (*Exporter, error) {
	u, err := url.Parse(opts.URL)
	if err != nil {
		return nil, fmt.Errorf("parse ipfix url %q: %w", opts.URL, err)
	}
	if u.Host == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") {
		return nil, fmt.Errorf("parse ipfix url %q: want udp://HOST:PORT, tcp://HOST:PORT or tls://HOST:PORT", opts.URL)
	}
	e := &Exporter{addr: u.Host, opts: opts}
	switch u.Scheme {
	case "udp":
		e.network = "udp"
		if opts.MaxMessage <= 0 {
			e.opts.MaxMessage = DefaultUDPMessage
		}
	case "tcp", "tls":
		e.network = u.Scheme
		if opts.MaxMessage <= 0 {
			e.opts.MaxMessage = DefaultStreamMessage
		}
	default:
		return nil, fmt.Errorf("parse ipfix url %q: scheme %q: want udp, tcp or tls", opts.URL, u.Scheme)
	}
	e.opts.MaxMessage = min(e.opts.MaxMessage, DefaultStreamMessage)
	if e.opts.TemplateInterval <= 0 {
		e.opts.TemplateInterval = DefaultTemplateInterval
	}
	if e.opts.Now == nil {
		e.opts.Now = time.Now
	}
	e.enc = newEncoder(opts.Domain, e.opts.MaxMessage)
	return e, nil
}

func (e *Exporter) dial(ctx context.Context) (net.Conn, error) {
	if e.network == "tls" {
		d := tls.Dialer{NetDialer: &e.dialer, Config: e.opts.TLS}
		return d.DialContext(ctx, "tcp", e.addr)
	}
	return e.dialer.DialContext(ctx, e.network, e.addr)
}

// Export implements export.Exporter: it writes b's flows as messages,
// connecting first if it is not. On an error it closes the connection, so
// that the next try begins a new one with the templates.
func (e *Exporter) Export(ctx context.Context, b export.Batch) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.conn == nil {
		c, err := e.dial(ctx)
		if err != nil {
			return fmt.Errorf("connect to ipfix collector %s: %w", e.addr, err)
		}
		e.conn, e.templated, e.sinceTemplates = c, time.Time{}, 0
	}
	now := e.opts.Now()
	templates := e.templated.IsZero()
	if e.network == "udp" {
		templates = templates || now.Sub(e.templated) >= e.opts.TemplateInterval ||
			(e.opts.TemplateMessages > 0 && e.sinceTemplates >= e.opts.TemplateMessages)
	}
	seq := e.enc.seq
	e.msgs = e.enc.encode(e.msgs[:0], b.Flows, b.SampleRate, now, templates)
	// A collector that reads slowly holds the writes up to ctx's end.
	conn := e.conn
	conn.SetWriteDeadline(time.Time{})
	if dl, ok := ctx.Deadline(); ok {
		conn.SetWriteDeadline(dl)
	}
	defer context.AfterFunc(ctx, func() { conn.SetWriteDeadline(time.Unix(1, 0)) })()
	for i, m := range e.msgs {
		if _, err := e.conn.Write(m); err != nil {
			e.conn.Close()
			e.conn = nil
			// The records are sent again, with the sequence numbers they
			// had.
			e.enc.seq = seq
			return fmt.Errorf("write ipfix message to %s: %w", e.addr, err)
		}
		if templates && i == 0 {
			e.templated, e.sinceTemplates = now, 0
		}
		e.sinceTemplates++
	}
	return nil
}

// Close closes the connection.
func (e *Exporter) Close(context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.conn == nil {
		return nil
	}
	err := e.conn.Close()
	e.conn = nil
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
