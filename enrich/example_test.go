package enrich_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/flowmap/flowmap/enrich"
	"github.com/flowmap/flowmap/flows"
	"github.com/flowmap/flowmap/model"
)

// The agent's wiring: the datapath's batches are enriched as they come,
// the inventory's sources run beside it, its collector is registered and
// its status answers /readyz.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	logger := slog.Default()
	inv, err := enrich.New(enrich.Config{
		NetNS:        true,
		DockerSocket: "/run/docker.sock",
		CIDRFile:     "/etc/flowmap/cidrs",
		Logger:       logger.With("component", "enrich"),
	})
	if err != nil {
		logger.Error("inventory", "err", err)
		return
	}
	prometheus.MustRegister(enrich.NewCollector(inv))
	dp, err := flows.New(flows.Config{Logger: logger.With("component", "flows")})
	if err != nil {
		logger.Error("datapath", "err", err)
		return
	}
	defer dp.Close()
	batches := make(chan model.Batch, 4)
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return inv.Run(ctx) })
	g.Go(func() error { return dp.Run(ctx, batches) })
	g.Go(func() error {
		for {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case b := <-batches:
				for _, r := range b.Records {
					f := inv.Enrich(r)
					fmt.Printf("%s %s → %s %s\n", f.SrcEndpoint.Kind, f.SrcEndpoint.Name, f.DstEndpoint.Kind, f.DstEndpoint.Name)
				}
			}
		}
	})
	for _, st := range inv.Status() { // for /readyz
		fmt.Println(st.Name, st.Up, st.LastSync, st.Endpoints, st.LastError)
	}
	g.Wait()
}
