package enrich

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/flowmap/flowmap/model"
)

// Instance is the cloud instance this machine is, as its metadata service
// tells it. Fields the provider does not give are empty.
type Instance struct {
	Provider string `json:"provider"` // "aws", "gcp", "azure"
	// Account is the AWS account, GCP project or Azure subscription.
	Account string       `json:"account,omitempty"`
	Region  string       `json:"region,omitempty"`
	Zone    string       `json:"zone,omitempty"`
	ID      string       `json:"id,omitempty"`
	Type    string       `json:"type,omitempty"`
	VPC     string       `json:"vpc,omitempty"`
	Subnet  string       `json:"subnet,omitempty"`
	Addrs   []netip.Addr `json:"addrs,omitempty"`
}

// Labels returns the instance as labels of the host endpoint, with
// OpenTelemetry's resource attribute names where it has one.
func (in Instance) Labels() map[string]string {
	m := make(map[string]string)
	set := func(k, v string) {
		if v != "" {
			m[k] = v
		}
	}
	set("cloud.provider", in.Provider)
	set("cloud.account.id", in.Account)
	set("cloud.region", in.Region)
	set("cloud.availability_zone", in.Zone)
	set("host.id", in.ID)
	set("host.type", in.Type)
	set("cloud.vpc.id", in.VPC)
	set("cloud.subnet.id", in.Subnet)
	return m
}

// errNoCloud means that the provider's metadata service is not there: the
// normal case off that cloud, not an error.
var errNoCloud = errors.New("no metadata service")

// errBadAnswer wraps an answer that a metadata service gave but that
// cannot be read.
var errBadAnswer = errors.New("bad metadata answer")

// cloudSource asks the cloud's instance metadata service what this
// instance is, and labels the host endpoint with it.
type cloudSource struct {
	providers []string
	base      string
	client    *http.Client

	mu       sync.Mutex
	instance *Instance
}

var cloudProviders = map[string]func(c *cloudSource, ctx context.Context) (Instance, error){
	"aws":   (*cloudSource).aws,
	"gcp":   (*cloudSource).gcp,
	"azure": (*cloudSource).azure,
}

func newCloudSource(which, base string, timeout time.Duration) (*cloudSource, error) {
	c := &cloudSource{
		base: strings.TrimSuffix(base, "/"),
		client: &http.Client{
			Timeout: timeout,
			// A metadata service is on the link: never through a proxy.
			Transport: &http.Transport{Proxy: nil, MaxIdleConns: 3},
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		},
	}
	switch which {
	case "auto":
		c.providers = []string{"aws", "gcp", "azure"}
	case "aws", "gcp", "azure":
		c.providers = []string{which}
	default:
		return nil, fmt.Errorf("cloud provider %q: want auto, aws, gcp or azure", which)
	}
	return c, nil
}

func (c *cloudSource) run(ctx context.Context, s *sourceState) error {
	for {
		in, err := c.probe(ctx)
		if ctx.Err() != nil {
			return nil
		}
		switch {
		case err == nil:
			c.mu.Lock()
			c.instance = &in
			c.mu.Unlock()
			s.setDetail(in.Provider + " " + in.ID)
			s.publish([]record{{
				ep:   model.Endpoint{Kind: model.KindHost, Labels: in.Labels(), Addrs: in.Addrs},
				keys: []joinKey{hostKey()},
			}})
			// An instance does not change what it is while it runs.
			<-ctx.Done()
			return nil
		case errors.Is(err, errBadAnswer):
			s.bad("bad_answer", err)
		default:
			s.setDetail("not on a cloud: " + err.Error())
			s.publish(nil)
		}
		// Look again now and then: a metadata service may come late (a
		// firewall rule, a route), and absence costs one request each.
		if !sleep(ctx, max(s.inv.cfg.Resync, time.Second)) {
			return nil
		}
	}
}

// instance returns what the source found, if it found an instance.
func (c *cloudSource) instanceInfo() (Instance, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.instance == nil {
		return Instance{}, false
	}
	return *c.instance, true
}

// probe asks each provider at once and returns the first that answers as
// itself; errNoCloud if none does, or a bad answer's error.
func (c *cloudSource) probe(ctx context.Context) (Instance, error) {
	type result struct {
		in  Instance
		err error
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan result, len(c.providers))
	for _, p := range c.providers {
		go func() {
			in, err := cloudProviders[p](c, ctx)
			if err != nil {
				err = fmt.Errorf("%s: %w", p, err)
			}
			results <- result{in, err}
		}()
	}
	var absent, bad []error
	for range c.providers {
		r := <-results
		switch {
		case r.err == nil:
			return r.in, nil
		case errors.Is(r.err, errBadAnswer):
			bad = append(bad, r.err)
		default:
			absent = append(absent, r.err)
		}
	}
	if len(bad) > 0 {
		return Instance{}, errors.Join(bad...)
	}
	return Instance{}, errors.Join(absent...)
}

// request makes one metadata request. A service that does not answer, or
// answers 404, is absent (errNoCloud); an answer that is not 200 is bad.
func (c *cloudSource) request(ctx context.Context, method, path string, header map[string]string) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("make request %s: %w", path, err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		// Off-cloud, 169.254.169.254 is refused, unreachable or silent.
		return nil, nil, fmt.Errorf("%w: %s %s: %w", errNoCloud, method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: read %s: %w", errBadAnswer, path, err)
	}
	switch {
	case resp.StatusCode == http.StatusOK:
		return resp, b, nil
	case resp.StatusCode == http.StatusNotFound, resp.StatusCode == http.StatusMethodNotAllowed,
		resp.StatusCode == http.StatusForbidden, resp.StatusCode == http.StatusBadRequest:
		// Another provider's service, or something else on the address.
		return nil, nil, fmt.Errorf("%w: %s %s: %s", errNoCloud, method, path, resp.Status)
	}
	return nil, nil, fmt.Errorf("%w: %s %s: %s", errBadAnswer, method, path, resp.Status)
}

// aws reads EC2's instance metadata with an IMDSv2 session token.
func (c *cloudSource) aws(ctx context.Context) (Instance, error) {
	_, tok, err := c.request(ctx, http.MethodPut, "/latest/api/token",
		map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "60"})
	if err != nil {
		return Instance{}, err
	}
	token := strings.TrimSpace(string(tok))
	if token == "" || strings.ContainsAny(token, "\r\n<{") {
		return Instance{}, fmt.Errorf("%w: token %.40q", errBadAnswer, tok)
	}
	h := map[string]string{"X-aws-ec2-metadata-token": token}
	_, b, err := c.request(ctx, http.MethodGet, "/latest/dynamic/instance-identity/document", h)
	if err != nil {
		return Instance{}, notAbsent(err)
	}
	var doc struct {
		AccountID        string `json:"accountId"`
		Region           string `json:"region"`
		AvailabilityZone string `json:"availabilityZone"`
		InstanceID       string `json:"instanceId"`
		InstanceType     string `json:"instanceType"`
		PrivateIP        string `json:"privateIp"`
	}
	if err := json.Unmarshal(b, &doc); err != nil || doc.InstanceID == "" {
		return Instance{}, fmt.Errorf("%w: instance identity document %.60q: %v", errBadAnswer, b, err)
	}
	in := Instance{Provider: "aws", Account: doc.AccountID, Region: doc.Region, Zone: doc.AvailabilityZone,
		ID: doc.InstanceID, Type: doc.InstanceType, Addrs: parseAddrs([]string{doc.PrivateIP})}
	// The VPC and subnet are the primary interface's; not every instance
	// (or a minimal emulator) has them.
	if _, mac, err := c.request(ctx, http.MethodGet, "/latest/meta-data/mac", h); err == nil {
		m := strings.TrimSpace(string(mac))
		if _, v, err := c.request(ctx, http.MethodGet, "/latest/meta-data/network/interfaces/macs/"+m+"/vpc-id", h); err == nil {
			in.VPC = strings.TrimSpace(string(v))
		}
		if _, v, err := c.request(ctx, http.MethodGet, "/latest/meta-data/network/interfaces/macs/"+m+"/subnet-id", h); err == nil {
			in.Subnet = strings.TrimSpace(string(v))
		}
	}
	return in, nil
}

// gcp reads Compute Engine's metadata server.
func (c *cloudSource) gcp(ctx context.Context) (Instance, error) {
	h := map[string]string{"Metadata-Flavor": "Google"}
	resp, b, err := c.request(ctx, http.MethodGet, "/computeMetadata/v1/instance/?recursive=true", h)
	if err != nil {
		return Instance{}, err
	}
	if resp.Header.Get("Metadata-Flavor") != "Google" {
		// Something answers, but not GCP's metadata server.
		return Instance{}, fmt.Errorf("%w: no Metadata-Flavor: Google in the answer", errNoCloud)
	}
	var doc struct {
		ID                json.RawMessage `json:"id"`
		MachineType       string          `json:"machineType"`
		Zone              string          `json:"zone"`
		NetworkInterfaces []struct {
			IP      string `json:"ip"`
			Network string `json:"network"`
		} `json:"networkInterfaces"`
	}
	if err := json.Unmarshal(b, &doc); err != nil || len(doc.ID) == 0 || doc.Zone == "" {
		return Instance{}, fmt.Errorf("%w: instance %.60q: %v", errBadAnswer, b, err)
	}
	// machineType and zone are paths: projects/<number>/zones/us-central1-a.
	last := func(s string) string { return s[strings.LastIndexByte(s, '/')+1:] }
	in := Instance{Provider: "gcp", ID: string(bytes.Trim(doc.ID, `"`)), Type: last(doc.MachineType), Zone: last(doc.Zone)}
	if i := strings.LastIndexByte(in.Zone, '-'); i > 0 {
		in.Region = in.Zone[:i]
	}
	for _, ni := range doc.NetworkInterfaces {
		in.Addrs = append(in.Addrs, parseAddrs([]string{ni.IP})...)
		if in.VPC == "" {
			in.VPC = last(ni.Network)
		}
	}
	if _, p, err := c.request(ctx, http.MethodGet, "/computeMetadata/v1/project/project-id", h); err == nil {
		in.Account = strings.TrimSpace(string(p))
	}
	return in, nil
}

// azure reads Azure's Instance Metadata Service.
func (c *cloudSource) azure(ctx context.Context) (Instance, error) {
	_, b, err := c.request(ctx, http.MethodGet, "/metadata/instance?api-version=2021-02-01", map[string]string{"Metadata": "true"})
	if err != nil {
		return Instance{}, err
	}
	var doc struct {
		Compute struct {
			Location       string `json:"location"`
			Zone           string `json:"zone"`
			VMID           string `json:"vmId"`
			VMSize         string `json:"vmSize"`
			SubscriptionID string `json:"subscriptionId"`
		} `json:"compute"`
		Network struct {
			Interface []struct {
				IPv4 struct {
					IPAddress []struct {
						PrivateIPAddress string `json:"privateIpAddress"`
					} `json:"ipAddress"`
					Subnet []struct {
						Address string `json:"address"`
						Prefix  string `json:"prefix"`
					} `json:"subnet"`
				} `json:"ipv4"`
			} `json:"interface"`
		} `json:"network"`
	}
	if err := json.Unmarshal(b, &doc); err != nil || doc.Compute.VMID == "" {
		return Instance{}, fmt.Errorf("%w: instance %.60q: %v", errBadAnswer, b, err)
	}
	in := Instance{Provider: "azure", Account: doc.Compute.SubscriptionID, Region: doc.Compute.Location,
		ID: doc.Compute.VMID, Type: doc.Compute.VMSize}
	if doc.Compute.Zone != "" {
		in.Zone = doc.Compute.Location + "-" + doc.Compute.Zone
	}
	for _, ni := range doc.Network.Interface {
		for _, a := range ni.IPv4.IPAddress {
			in.Addrs = append(in.Addrs, parseAddrs([]string{a.PrivateIPAddress})...)
		}
		if in.Subnet == "" && len(ni.IPv4.Subnet) > 0 {
			in.Subnet = ni.IPv4.Subnet[0].Address + "/" + ni.IPv4.Subnet[0].Prefix
		}
	}
	return in, nil
}

// notAbsent turns "absent" into "bad" for a request after the provider
// answered as itself: from there on, silence is a fault.
func notAbsent(err error) error {
	if errors.Is(err, errNoCloud) {
		return fmt.Errorf("%w: %w", errBadAnswer, err)
	}
	return err
}

// Instance returns the cloud instance this machine is, if the cloud source
// is on and found one.
func (inv *Inventory) Instance() (Instance, bool) {
	for _, s := range inv.sources {
		if c, ok := s.src.(*cloudSource); ok {
			return c.instanceInfo()
		}
	}
	return Instance{}, false
}
