// Command otelcol is an OpenTelemetry Collector for flowmap's exporter
// tests, as the collector builder (ocb) would generate it: the OTLP
// receiver and the file exporter, from one collector release. It is a
// module of its own so that the project's binary does not depend on the
// collector; the tests build it once into the Go build cache.
package main

import (
	"context"
	"flag"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter"
	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/provider/fileprovider"
	"go.opentelemetry.io/collector/exporter"
	"go.opentelemetry.io/collector/otelcol"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	"go.opentelemetry.io/collector/service/telemetry/otelconftelemetry"
)

func main() {
	config := flag.String("config", "", "the configuration file")
	flag.Parse()
	set := otelcol.CollectorSettings{
		BuildInfo: component.BuildInfo{Command: "otelcol-flowmap", Description: "OTLP in, file out, for flowmap's tests", Version: "test"},
		Factories: components,
		ConfigProviderSettings: otelcol.ConfigProviderSettings{
			ResolverSettings: confmap.ResolverSettings{
				URIs:              []string{*config},
				ProviderFactories: []confmap.ProviderFactory{fileprovider.NewFactory()},
				DefaultScheme:     "file",
			},
		},
		// The collector subscribes to SIGTERM only after it has logged
		// "Everything is ready": a test's SIGTERM in between killed it
		// before its file exporters flushed. Subscribed here, before it
		// starts, a SIGTERM at any time shuts it down gracefully.
		DisableGracefulShutdown: true,
	}
	col, err := otelcol.NewCollector(set)
	if err != nil {
		log.Fatal(err)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, os.Interrupt)
	go func() {
		<-sigs
		col.Shutdown()
	}()
	if err := col.Run(context.Background()); err != nil {
		log.Fatal(err)
	}
}

func components() (otelcol.Factories, error) {
	f := otelcol.Factories{Telemetry: otelconftelemetry.NewFactory()}
	var err error
	if f.Receivers, err = otelcol.MakeFactoryMap[receiver.Factory](otlpreceiver.NewFactory()); err != nil {
		return f, err
	}
	if f.Exporters, err = otelcol.MakeFactoryMap[exporter.Factory](fileexporter.NewFactory()); err != nil {
		return f, err
	}
	return f, nil
}
