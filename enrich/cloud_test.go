package enrich_test

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/flowmap/flowmap/enrich"
	"github.com/flowmap/flowmap/model"
)

// awsMetadata answers as EC2's IMDSv2 does: a PUT for a session token,
// then GETs that must carry it (401 without).
func awsMetadata(t *testing.T, document string) http.Handler {
	const token = "AQAEAFakeTokenForTests=="
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /latest/api/token", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds") == "" {
			http.Error(w, "", http.StatusBadRequest)
			return
		}
		fmt.Fprint(w, token)
	})
	meta := map[string]string{
		"/latest/dynamic/instance-identity/document":                            document,
		"/latest/meta-data/mac":                                                 "0e:1f:2a:3b:4c:5d",
		"/latest/meta-data/network/interfaces/macs/0e:1f:2a:3b:4c:5d/vpc-id":    "vpc-0a1b2c3d",
		"/latest/meta-data/network/interfaces/macs/0e:1f:2a:3b:4c:5d/subnet-id": "subnet-4e5f6a7b",
	}
	for path, body := range meta {
		mux.HandleFunc("GET "+path, func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("X-aws-ec2-metadata-token") != token {
				http.Error(w, "", http.StatusUnauthorized)
				return
			}
			fmt.Fprint(w, body)
		})
	}
	return mux
}

const awsDocument = `{
  "accountId" : "123456789012", "architecture" : "x86_64", "availabilityZone" : "eu-west-1b",
  "imageId" : "ami-0abcdef1234567890", "instanceId" : "i-0123456789abcdef0", "instanceType" : "m6i.large",
  "privateIp" : "198.51.100.60", "region" : "eu-west-1", "version" : "2017-09-30"
}`

// gcpMetadata answers as Compute Engine's metadata server does: only with
// Metadata-Flavor: Google, which it also sets on its answers.
func gcpMetadata(t *testing.T, instance string) http.Handler {
	mux := http.NewServeMux()
	serve := func(path, body string) {
		mux.HandleFunc("GET "+path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Metadata-Flavor", "Google")
			if r.Header.Get("Metadata-Flavor") != "Google" {
				http.Error(w, "Missing Metadata-Flavor:Google header.", http.StatusForbidden)
				return
			}
			fmt.Fprint(w, body)
		})
	}
	serve("/computeMetadata/v1/instance/", instance)
	serve("/computeMetadata/v1/project/project-id", "shop-prod-4711")
	return mux
}

const gcpInstance = `{"id":4520031799277581759,"machineType":"projects/912345678901/machineTypes/e2-standard-4",
"zone":"projects/912345678901/zones/europe-west4-a","hostname":"n1.c.shop-prod-4711.internal",
"networkInterfaces":[{"ip":"198.51.100.61","network":"projects/912345678901/networks/prod-vpc","mac":"42:01:0a:00:00:02"}]}`

// azureMetadata answers as Azure's IMDS does: only with Metadata: true.
func azureMetadata(t *testing.T, instance string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metadata/instance", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Metadata") != "true" || r.URL.Query().Get("api-version") == "" {
			http.Error(w, `{"error":"Bad request. Required metadata header not specified"}`, http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		fmt.Fprint(w, instance)
	})
	return mux
}

const azureInstance = `{"compute":{"location":"westeurope","name":"n1","resourceGroupName":"shop","subscriptionId":"8d10da13-8125-4ba9-a717-bf7490507b3d",
"vmId":"02aab8a4-74ef-476e-8182-f6d2ba4166a6","vmSize":"Standard_D2s_v5","zone":"2"},
"network":{"interface":[{"ipv4":{"ipAddress":[{"privateIpAddress":"198.51.100.62","publicIpAddress":""}],"subnet":[{"address":"198.51.100.0","prefix":"24"}]}}]}}`

func TestCloud(t *testing.T) {
	tests := []struct {
		name    string
		cloud   string
		handler func(t *testing.T) http.Handler
		want    enrich.Instance
	}{
		{"aws", "auto", func(t *testing.T) http.Handler { return awsMetadata(t, awsDocument) }, enrich.Instance{
			Provider: "aws", Account: "123456789012", Region: "eu-west-1", Zone: "eu-west-1b", ID: "i-0123456789abcdef0",
			Type: "m6i.large", VPC: "vpc-0a1b2c3d", Subnet: "subnet-4e5f6a7b", Addrs: []netip.Addr{netip.MustParseAddr("198.51.100.60")}}},
		{"gcp", "auto", func(t *testing.T) http.Handler { return gcpMetadata(t, gcpInstance) }, enrich.Instance{
			Provider: "gcp", Account: "shop-prod-4711", Region: "europe-west4", Zone: "europe-west4-a", ID: "4520031799277581759",
			Type: "e2-standard-4", VPC: "prod-vpc", Addrs: []netip.Addr{netip.MustParseAddr("198.51.100.61")}}},
		{"azure", "azure", func(t *testing.T) http.Handler { return azureMetadata(t, azureInstance) }, enrich.Instance{
			Provider: "azure", Account: "8d10da13-8125-4ba9-a717-bf7490507b3d", Region: "westeurope", Zone: "westeurope-2",
			ID: "02aab8a4-74ef-476e-8182-f6d2ba4166a6", Type: "Standard_D2s_v5", Subnet: "198.51.100.0/24",
			Addrs: []netip.Addr{netip.MustParseAddr("198.51.100.62")}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.handler(t))
			t.Cleanup(srv.Close)
			inv := startInventory(t, enrich.Config{Cloud: tt.cloud, CloudEndpoint: srv.URL, CloudTimeout: time.Second, Logger: testLogger(t)})
			got, ok := waitInstance(inv, 5*time.Second)
			if !ok {
				t.Fatalf("Instance() = false after 5s, want %+v (status %+v)", tt.want, inv.Status())
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("Instance() = %+v, want %+v", got, tt.want)
			}
			// The host endpoint carries the instance as labels.
			var ep model.Endpoint
			for start := time.Now(); time.Since(start) < 2*time.Second; time.Sleep(10 * time.Millisecond) {
				if ep = inv.Resolve(tt.want.Addrs[0], model.Interface{}); ep.Labels["cloud.provider"] != "" {
					break
				}
			}
			if ep.Kind != model.KindHost || ep.Labels["cloud.provider"] != tt.want.Provider || ep.Labels["host.id"] != tt.want.ID {
				t.Errorf("Resolve(%v) = %s %q labels %v, want the host with cloud labels", tt.want.Addrs[0], ep.Kind, ep.Name, ep.Labels)
			}
		})
	}
}

func waitInstance(inv *enrich.Inventory, limit time.Duration) (enrich.Instance, bool) {
	for start := time.Now(); time.Since(start) < limit; time.Sleep(10 * time.Millisecond) {
		if in, ok := inv.Instance(); ok {
			return in, true
		}
	}
	return enrich.Instance{}, false
}

// cloudStatus waits until the cloud source has a detail and returns it.
func cloudStatus(t *testing.T, inv *enrich.Inventory, limit time.Duration) enrich.SourceStatus {
	t.Helper()
	var st enrich.SourceStatus
	for start := time.Now(); time.Since(start) < limit; time.Sleep(10 * time.Millisecond) {
		for _, s := range inv.Status() {
			if s.Name == "cloud" {
				st = s
			}
		}
		if st.Detail != "" || st.LastError != "" {
			return st
		}
	}
	return st
}

// TestCloudAbsent checks that no metadata service, or one that never
// answers, is normal: the source is up, says why in its detail, and
// counts no error.
func TestCloudAbsent(t *testing.T) {
	silent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}))
	t.Cleanup(silent.Close)
	// A port that was listening a moment ago: refused.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + l.Addr().String()
	l.Close()
	other := httptest.NewServer(http.NotFoundHandler()) // something else on the address
	t.Cleanup(other.Close)

	tests := []struct {
		name, endpoint, detail string
	}{
		{"refused", refused, "connection refused"},
		{"timeout", silent.URL, "Timeout"},
		{"not found", other.URL, "404"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			inv := startInventory(t, enrich.Config{Cloud: "auto", CloudEndpoint: tt.endpoint, CloudTimeout: 200 * time.Millisecond, Logger: testLogger(t)})
			st := cloudStatus(t, inv, 3*time.Second)
			took := time.Since(start)
			if !st.Up || st.LastError != "" || !strings.Contains(st.Detail, "not on a cloud") || !strings.Contains(st.Detail, tt.detail) {
				t.Errorf("cloud status %+v, want up, no error, detail saying not on a cloud: %s", st, tt.detail)
			}
			if took > 2*time.Second {
				t.Errorf("cloud source took %v to give up, want about its 200ms timeout", took)
			}
			if n := errorCount(t, inv, "cloud", "bad_answer"); n != 0 {
				t.Errorf("cloud errors = %v, want 0 off-cloud", n)
			}
			if _, ok := inv.Instance(); ok {
				t.Errorf("Instance() = true, want false off-cloud")
			}
		})
	}
}

// TestCloudGarbage checks that a metadata service that answers as itself
// but with garbage gives a log line and a counter, and no instance.
func TestCloudGarbage(t *testing.T) {
	tests := []struct {
		name    string
		cloud   string
		handler http.Handler
	}{
		{"aws document", "auto", awsMetadata(t, "<html>502 Bad Gateway</html>")},
		{"aws document without id", "aws", awsMetadata(t, `{"region":"eu-west-1"}`)},
		{"aws token", "aws", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "oops", http.StatusInternalServerError)
		})},
		{"gcp", "gcp", gcpMetadata(t, `{"id": 12, "zone": `)},
		{"azure", "auto", azureMetadata(t, `{"compute":{"location":"westeurope"}}`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.handler)
			t.Cleanup(srv.Close)
			inv := startInventory(t, enrich.Config{Cloud: tt.cloud, CloudEndpoint: srv.URL, CloudTimeout: time.Second, Logger: testLogger(t)})
			st := cloudStatus(t, inv, 3*time.Second)
			if st.LastError == "" {
				t.Fatalf("cloud status %+v, want the bad answer as last error", st)
			}
			if n := errorCount(t, inv, "cloud", "bad_answer"); n < 1 {
				t.Errorf("cloud bad_answer errors = %v, want at least 1", n)
			}
			if in, ok := inv.Instance(); ok {
				t.Errorf("Instance() = %+v, want none from garbage", in)
			}
		})
	}
}

func TestCloudConfig(t *testing.T) {
	if _, err := enrich.New(enrich.Config{Cloud: "oracle"}); err == nil || !strings.Contains(err.Error(), "oracle") {
		t.Fatalf("New(Cloud: oracle) error = %v, want one naming the provider", err)
	}
}
