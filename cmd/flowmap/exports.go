package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowmap/flowmap/export"
	"github.com/flowmap/flowmap/export/ipfix"
	"github.com/flowmap/flowmap/export/otlp"
)

// exportFlags are the settings of the flow exporters.
type exportFlags struct {
	otlp, ipfix string
	// otlpCompression is none or gzip.
	otlpCompression string
	namespaces      globs
	ports           string
	sample          uint
	queue           int
	queueBytes      int
	// otlpMetrics is how often the edge series go to --export-otlp; 0:
	// never.
	otlpMetrics time.Duration
	ipfixDomain uint
	// ipfixRefresh and ipfixRefreshMessages: how often the templates are
	// sent again over UDP.
	ipfixRefresh         time.Duration
	ipfixRefreshMessages int
}

func (e *exportFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&e.otlp, "export-otlp", "",
		"send each flow as an OTLP log record to this OpenTelemetry Collector endpoint: grpc://HOST:PORT, grpcs://HOST:PORT (TLS), or http(s)://HOST:PORT[/PATH]")
	fs.StringVar(&e.otlpCompression, "export-otlp-compression", "none",
		"compression of the requests to --export-otlp: none, or gzip (a tenth of the bytes for about 10% more CPU; for a link slower than the loopback or a LAN)")
	fs.StringVar(&e.ipfix, "export-ipfix", "",
		"send each flow as an IPFIX record to this collector: udp://HOST:PORT, tcp://HOST:PORT or tls://HOST:PORT")
	fs.Var(&e.namespaces, "export-namespaces", "comma-separated Kubernetes namespaces: export only the flows with an end in one of them (default: all)")
	fs.StringVar(&e.ports, "export-ports", "",
		"comma-separated PROTO/PORT, PORT or PROTO (tcp/443,53,icmp): export only the flows to one of these server ports (default: all)")
	fs.UintVar(&e.sample, "export-sample", 1, "export one flow in N, chosen by a hash of the flow's key (so a flow is exported in every interval or none); the records carry N")
	fs.DurationVar(&e.otlpMetrics, "export-otlp-metrics-interval", otlp.DefaultMetricsInterval,
		"how often to send the flow series (edges, under --metrics-max-edges) and the HTTP and DNS series to --export-otlp as OTLP metrics; 0: never")
	fs.IntVar(&e.queue, "export-queue", 65536, "flow records each exporter's queue holds while its collector is slow or down, at most --export-queue-bytes / 976 (a record's size); newer ones are dropped and counted")
	fs.IntVar(&e.queueBytes, "export-queue-bytes", 16<<20, "bound on the memory of each exporter's queue, in bytes (a record is 976 B)")
	fs.UintVar(&e.ipfixDomain, "export-ipfix-domain", 0, "observation domain ID of the IPFIX messages")
	fs.DurationVar(&e.ipfixRefresh, "export-ipfix-template-refresh", ipfix.DefaultTemplateInterval,
		"over UDP, send the IPFIX templates again this often (over TCP they lead each connection)")
	fs.IntVar(&e.ipfixRefreshMessages, "export-ipfix-template-messages", 0,
		"over UDP, send the IPFIX templates again also every N messages (0: by time alone)")
}

// check checks the flags, before the agent starts anything.
func (e *exportFlags) check() error {
	if _, err := export.ParsePorts(e.ports); err != nil {
		return fmt.Errorf("--export-ports: %w", err)
	}
	if e.sample == 0 || e.sample > 1<<31 {
		return fmt.Errorf("--export-sample=%d: want 1 to 2^31", e.sample)
	}
	if e.otlp != "" {
		if err := otlp.CheckURL(e.otlp); err != nil {
			return fmt.Errorf("--export-otlp: %w", err)
		}
		if err := otlp.CheckCompression(e.otlpCompression); err != nil {
			return fmt.Errorf("--export-otlp-compression: %w", err)
		}
	}
	if e.ipfix != "" {
		if _, err := ipfix.New(ipfix.Options{URL: e.ipfix}); err != nil {
			return fmt.Errorf("--export-ipfix: %w", err)
		}
	}
	return nil
}

// exporters returns a queue in front of each exporter the flags ask for,
// its collector registered in reg.
func (e *exportFlags) exporters(ctx context.Context, node string, reg prometheus.Registerer, log *slog.Logger) ([]*export.Queue, error) {
	if err := e.check(); err != nil {
		return nil, err
	}
	ports, _ := export.ParsePorts(e.ports)
	filter := export.Filter{Namespaces: e.namespaces, Ports: ports, Sample: uint32(e.sample)}
	var qs []*export.Queue
	add := func(name string, exp export.Exporter) {
		q := export.NewQueue(exp, export.Options{Name: name, Capacity: e.queue, MaxBytes: e.queueBytes, Filter: filter,
			Logger: log.With("component", "export", "exporter", name)})
		reg.MustRegister(q)
		qs = append(qs, q)
	}
	if e.otlp != "" {
		exp, err := otlp.New(ctx, otlp.Options{URL: e.otlp, Node: node, Compression: e.otlpCompression})
		if err != nil {
			return nil, fmt.Errorf("--export-otlp: %w", err)
		}
		add("otlp", exp)
	}
	if e.ipfix != "" {
		exp, err := ipfix.New(ipfix.Options{URL: e.ipfix, Domain: uint32(e.ipfixDomain),
			TemplateInterval: e.ipfixRefresh, TemplateMessages: e.ipfixRefreshMessages})
		if err != nil {
			return nil, fmt.Errorf("--export-ipfix: %w", err)
		}
		add("ipfix", exp)
	}
	return qs, nil
}

// metrics returns the exporter of the edge series to --export-otlp, nil
// if there is none.
func (e *exportFlags) metrics(ctx context.Context, node string, edges otlp.Edges, l7 otlp.L7Edges) (*otlp.Metrics, error) {
	if e.otlp == "" || e.otlpMetrics <= 0 {
		return nil, nil
	}
	m, err := otlp.NewMetrics(ctx, otlp.Options{URL: e.otlp, Node: node, Compression: e.otlpCompression}, edges, l7, e.otlpMetrics)
	if err != nil {
		return nil, fmt.Errorf("--export-otlp: %w", err)
	}
	return m, nil
}
