package enrich_test

import (
	"context"
	"net/netip"
	"testing"

	"github.com/flowmap/flowmap/enrich"
	"github.com/flowmap/flowmap/internal/dockertest"
	"github.com/flowmap/flowmap/internal/testenv"
)

// TestPodman is TestDocker's engine case against Podman's Docker-compatible
// API (podman system service), with runc and lowered default ulimits.
func TestPodman(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	testenv.MustHaveCommand(t, "busybox")
	p := dockertest.StartPodmanT(t, dockertest.Options{Prefix: "fme", Subnet: netip.MustParsePrefix("198.51.100.240/28")})
	ctx := context.Background()
	image, err := p.ImportBusybox(ctx, "fme-busybox:1")
	if err != nil {
		t.Fatalf("import busybox: %v", err)
	}
	e := engine{cli: p.Podman, runArgs: []string{"--network", p.Network}, rm: []string{"rm", "-f", "-t", "0"}, subnet: p.Subnet}
	srv := runContainer(t, e, image, "fme-srv", map[string]string{"tier": "db"}, "httpd", "-f", "-p", "8080", "-h", "/www")
	cli := runContainer(t, e, image, "fme-cli", map[string]string{"tier": "web"},
		"sh", "-c", "while true; do wget -q -O /dev/null http://"+srv.addr.String()+":8080/; sleep 0.2; done")
	batches := watchBridge(t, p.Bridge)
	testEngineNames(t, e, enrich.Config{NetNS: true, PodmanSocket: p.Socket, Logger: testLogger(t)}, batches, image, cli, srv)
}
