package k8sbox

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flowmap/flowmap/internal/daemon"
	"github.com/flowmap/flowmap/internal/dockertest"
)

// The box's network: see the package comment.
const (
	Bridge      = "fmk8s0"
	NodeIP      = "10.213.0.1"
	PodCIDR     = "10.213.0.0/24"
	ServiceCIDR = "10.213.1.0/24"
	// NodeName is the one node's name.
	NodeName = "fmk8s-node"
	// SandboxImage is the pods' sandbox image (busybox sleeping) and
	// BusyboxImage the workloads' (busybox, its applets in /bin).
	SandboxImage = "docker.io/library/fmk8s-pause:1"
	BusyboxImage = "docker.io/library/fmk8s-busybox:1"
	// PodAddresses is how many addresses the pods' range has,
	// PodRangeStart on: few, so that a test can fill it and make the
	// allocator give a deleted pod's address to the next pod.
	PodRangeStart = "10.213.0.10"
	PodRangeEnd   = "10.213.0.29"
	PodAddresses  = 20
	// cgroupRoot holds the pods' cgroups in every hierarchy.
	cgroupRoot = "flowmap-k8sbox"
)

// Cluster is a running cluster.
type Cluster struct {
	// Dir holds certificates, kubeconfigs, data, state and every log.
	Dir string
	// Bin is the directory of the Kubernetes binaries.
	Bin string
	// Kubeconfig is the admin's (system:masters).
	Kubeconfig string
	// CRISocket is containerd's socket: what the agent's --cri-socket
	// names on this node.
	CRISocket string

	log   *slog.Logger
	host  *hostState
	procs []*daemon.Proc // in start order
	guard [][]string
}

// Start builds the binaries if they are not cached, starts the cluster
// and waits until its node is Ready. Close stops it and removes what it
// made. Needs root, containerd, runc, the CNI plugins in /usr/lib/cni,
// iptables, ip and busybox (Debian: containerd runc
// containernetworking-plugins iptables iproute2 busybox-static).
func Start(ctx context.Context, log *slog.Logger) (_ *Cluster, err error) {
	if os.Geteuid() != 0 {
		return nil, errNotRoot
	}
	bin, err := Build(ctx, log, os.Stderr)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "fmk8s-")
	if err != nil {
		return nil, fmt.Errorf("make cluster directory: %w", err)
	}
	c := &Cluster{Dir: dir, Bin: bin, log: log, CRISocket: filepath.Join(dir, "containerd", "containerd.sock")}
	if c.host, err = saveHost(ctx); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	// On failure, undo what was made: err is what Start returns.
	defer func() {
		if err != nil {
			if cerr := c.Close(); cerr != nil {
				log.Warn("close the cluster that failed to start", "err", cerr)
			}
		}
	}()
	t0 := time.Now()
	if err := c.network(ctx); err != nil {
		return nil, err
	}
	if err := c.certificates(); err != nil {
		return nil, err
	}
	if err := c.startControlPlane(ctx); err != nil {
		return nil, err
	}
	if err := c.startContainerd(ctx); err != nil {
		return nil, err
	}
	if err := c.startNode(ctx); err != nil {
		return nil, err
	}
	log.Info("cluster ready", "dir", dir, "took", time.Since(t0).Round(time.Millisecond))
	return c, nil
}

// network makes the bridge with the node's address, a route to the
// Services through it, and the rules that keep pods' traffic on it.
func (c *Cluster) network(ctx context.Context) error {
	if _, err := run(ctx, "ip", "link", "add", Bridge, "type", "bridge"); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"addr", "add", NodeIP + "/24", "dev", Bridge},
		{"link", "set", Bridge, "up"},
		// Services are reached through the bridge, never through the
		// host's default route: an address kube-proxy has not (yet)
		// translated stays on the bridge.
		{"route", "add", ServiceCIDR, "dev", Bridge, "src", NodeIP},
	} {
		if _, err := run(ctx, "ip", args...); err != nil {
			return err
		}
	}
	// Nothing is forwarded between the bridge and another interface:
	// the CNI bridge plugin turns forwarding on (isGateway), and
	// pods must not reach the machine's networks. In mangle, before the
	// ACCEPT rules of the CNI firewall plugin in filter.
	for _, rule := range [][]string{
		{"-i", Bridge, "!", "-o", Bridge, "-j", "DROP"},
		{"!", "-i", Bridge, "-o", Bridge, "-j", "DROP"},
	} {
		if _, err := run(ctx, "iptables", append([]string{"-w", "-t", "mangle", "-I", "FORWARD"}, rule...)...); err != nil {
			return err
		}
		c.guard = append(c.guard, rule)
	}
	return nil
}

func (c *Cluster) pki() string { return filepath.Join(c.Dir, "pki") }

func (c *Cluster) certificates() error {
	dir := c.pki()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("make pki directory: %w", err)
	}
	ca, err := newCA()
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, "ca.crt"), "CERTIFICATE", ca.der); err != nil {
		return err
	}
	if err := writeKey(filepath.Join(dir, "ca.key"), ca.key); err != nil {
		return err
	}
	serviceIP := strings.TrimSuffix(ServiceCIDR, "0/24") + "1"
	for _, cert := range []struct {
		name, cn string
		orgs     []string
		hosts    []string
	}{
		{"apiserver", "kube-apiserver", nil, []string{NodeIP, serviceIP, "127.0.0.1", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}},
		{"etcd", "etcd", nil, []string{"127.0.0.1"}},
		{"admin", "admin", []string{"system:masters"}, nil},
		{"apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, nil},
		{"controller-manager", "system:kube-controller-manager", nil, nil},
		{"scheduler", "system:kube-scheduler", nil, nil},
		{"kubelet", "system:node:" + NodeName, []string{"system:nodes"}, nil},
		{"kube-proxy", "system:kube-proxy", nil, nil},
	} {
		if err := ca.issue(dir, cert.name, cert.cn, cert.orgs, cert.hosts...); err != nil {
			return err
		}
	}
	if err := serviceAccountKey(dir); err != nil {
		return err
	}
	server := "https://" + NodeIP + ":6443"
	for _, name := range []string{"admin", "controller-manager", "scheduler", "kubelet", "kube-proxy"} {
		path, err := kubeconfig(dir, name, server)
		if err != nil {
			return err
		}
		if name == "admin" {
			c.Kubeconfig = path
		}
	}
	return nil
}

// start starts a program of the cluster, its log <Dir>/<name>.log.
func (c *Cluster) start(name string, args ...string) (*daemon.Proc, error) {
	p, err := daemon.Start(name, filepath.Join(c.Dir, name+".log"), exec.Command(filepath.Join(c.Bin, name), args...), true)
	if err != nil {
		return nil, err
	}
	c.procs = append(c.procs, p)
	return p, nil
}

// startControlPlane starts etcd, the API server, the controller manager
// and the scheduler.
func (c *Cluster) startControlPlane(ctx context.Context) error {
	pki := c.pki()
	clientPort, err := freePort()
	if err != nil {
		return err
	}
	peerPort, err := freePort()
	if err != nil {
		return err
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(clientPort)
	etcd, err := c.start("etcd", "--name=box", "--data-dir="+filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls=http://127.0.0.1:"+strconv.Itoa(peerPort),
		"--initial-advertise-peer-urls=http://127.0.0.1:"+strconv.Itoa(peerPort),
		"--initial-cluster=box=http://127.0.0.1:"+strconv.Itoa(peerPort),
		"--log-level=warn", "--unsafe-no-fsync")
	if err != nil {
		return err
	}
	if err := etcd.WaitReady(ctx, 30*time.Second, func(context.Context) bool {
		r, err := http.Get(etcdURL + "/health")
		if err == nil {
			r.Body.Close()
		}
		return err == nil && r.StatusCode == 200
	}); err != nil {
		return err
	}
	p := func(f string) string { return filepath.Join(pki, f) }
	api, err := c.start("kube-apiserver",
		"--etcd-servers="+etcdURL,
		"--bind-address="+NodeIP, "--advertise-address="+NodeIP, "--secure-port=6443",
		"--service-cluster-ip-range="+ServiceCIDR,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--client-ca-file="+p("ca.crt"),
		"--tls-cert-file="+p("apiserver.crt"), "--tls-private-key-file="+p("apiserver.key"),
		"--kubelet-client-certificate="+p("apiserver-kubelet-client.crt"),
		"--kubelet-client-key="+p("apiserver-kubelet-client.key"),
		// The node by its address: its name is in no DNS, and the
		// lookup would leave the machine.
		"--kubelet-preferred-address-types=InternalIP",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+p("sa.pub"),
		"--service-account-signing-key-file="+p("sa.key"),
		"--api-audiences=https://kubernetes.default.svc",
		"--allow-privileged=true",
		"--profiling=false", "--v=1")
	if err != nil {
		return err
	}
	client, err := c.httpClient()
	if err != nil {
		return err
	}
	if err := api.WaitReady(ctx, 60*time.Second, func(context.Context) bool {
		r, err := client.Get("https://" + NodeIP + ":6443/readyz")
		if err == nil {
			r.Body.Close()
		}
		return err == nil && r.StatusCode == 200
	}); err != nil {
		return err
	}
	cmPort, err := freePort()
	if err != nil {
		return err
	}
	if _, err := c.start("kube-controller-manager",
		"--kubeconfig="+p("controller-manager.kubeconfig"),
		"--authentication-kubeconfig="+p("controller-manager.kubeconfig"),
		"--authorization-kubeconfig="+p("controller-manager.kubeconfig"),
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(cmPort),
		"--service-account-private-key-file="+p("sa.key"),
		"--root-ca-file="+p("ca.crt"),
		"--cluster-signing-cert-file="+p("ca.crt"), "--cluster-signing-key-file="+p("ca.key"),
		"--use-service-account-credentials=true",
		"--service-cluster-ip-range="+ServiceCIDR,
		"--leader-elect=false", "--v=1"); err != nil {
		return err
	}
	schedPort, err := freePort()
	if err != nil {
		return err
	}
	if _, err := c.start("kube-scheduler",
		"--kubeconfig="+p("scheduler.kubeconfig"),
		"--authentication-kubeconfig="+p("scheduler.kubeconfig"),
		"--authorization-kubeconfig="+p("scheduler.kubeconfig"),
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(schedPort),
		"--leader-elect=false", "--v=1"); err != nil {
		return err
	}
	return nil
}

// httpClient is an admin client of the API server.
func (c *Cluster) httpClient() (*http.Client, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(c.pki(), "admin.crt"), filepath.Join(c.pki(), "admin.key"))
	if err != nil {
		return nil, fmt.Errorf("load admin certificate: %w", err)
	}
	caPEM, err := os.ReadFile(filepath.Join(c.pki(), "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("read ca: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool},
	}}, nil
}

// startContainerd starts containerd with its CRI plugin and the box's CNI
// network, and loads the sandbox and busybox images.
func (c *Cluster) startContainerd(ctx context.Context) error {
	dir := filepath.Join(c.Dir, "containerd")
	cniDir := filepath.Join(dir, "cni")
	if err := os.MkdirAll(cniDir, 0o755); err != nil {
		return fmt.Errorf("make containerd directory: %w", err)
	}
	// bridge: the node's bridge, made already, its address the pods'
	// gateway; portmap for hostPorts; firewall to accept the pods'
	// traffic where FORWARD's policy is DROP (as Docker leaves it).
	conflist := fmt.Sprintf(`{"cniVersion":"0.4.0","name":"fmk8s","plugins":[
{"type":"bridge","bridge":%q,"isGateway":true,"ipMasq":false,"hairpinMode":true,
 "ipam":{"type":"host-local","ranges":[[{"subnet":%q,"gateway":%q,"rangeStart":%q,"rangeEnd":%q}]],
 "routes":[{"dst":"0.0.0.0/0"}],"dataDir":%q}},
{"type":"portmap","capabilities":{"portMappings":true}},
{"type":"firewall"}]}`, Bridge, PodCIDR, NodeIP, PodRangeStart, PodRangeEnd, filepath.Join(dir, "ipam"))
	if err := os.WriteFile(filepath.Join(cniDir, "10-fmk8s.conflist"), []byte(conflist), 0o644); err != nil {
		return fmt.Errorf("write cni config: %w", err)
	}
	config := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
[grpc]
  address = %[3]q
[ttrpc]
  address = "%[3]s.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = %[4]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[5]q
  disable_apparmor = true
  # The machine refuses runc a negative oom_score_adj (no
  # CAP_SYS_RESOURCE in the bounding set).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %[6]q
    max_conf_num = 1
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.CRISocket, filepath.Join(dir, "opt"), SandboxImage, cniDir)
	configPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
		return fmt.Errorf("write containerd config: %w", err)
	}
	bin, err := exec.LookPath("containerd")
	if err != nil {
		return fmt.Errorf("find containerd: %w (on Debian: apt-get install containerd runc)", err)
	}
	p, err := daemon.Start("containerd", filepath.Join(c.Dir, "containerd.log"), exec.Command(bin, "--config", configPath), true)
	if err != nil {
		return err
	}
	c.procs = append(c.procs, p)
	if err := p.WaitReady(ctx, 30*time.Second, func(ctx context.Context) bool {
		_, err := run(ctx, "ctr", "--address", c.CRISocket, "version")
		return err == nil
	}); err != nil {
		return err
	}
	for _, im := range []struct {
		name string
		cmd  []string
	}{{SandboxImage, []string{"/bin/sleep", "2147483647"}}, {BusyboxImage, []string{"/bin/sh"}}} {
		archive, err := dockertest.OCIArchive(im.name, im.cmd)
		if err != nil {
			return err
		}
		if err := c.ImportImage(ctx, bytes.NewReader(archive)); err != nil {
			return err
		}
	}
	return nil
}

// ImportImage loads an image archive (docker-archive or OCI) into the
// node's containerd, where the kubelet finds it.
func (c *Cluster) ImportImage(ctx context.Context, archive *bytes.Reader) error {
	cmd := exec.CommandContext(ctx, "ctr", "--address", c.CRISocket, "-n", "k8s.io", "images", "import", "-")
	cmd.Stdin = archive
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ctr images import: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// startNode starts the kubelet and kube-proxy and waits for the node to
// be Ready.
func (c *Cluster) startNode(ctx context.Context) error {
	pki := c.pki()
	for _, d := range cgroupRoots(cgroupRoot) {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("make cgroup: %w", err)
		}
	}
	kport, err := freePort()
	if err != nil {
		return err
	}
	kubeletConfig := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %[1]s
port: %[2]d
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %[3]q}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
cgroupRoot: /%[4]s
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://%[5]s
podLogsDir: %[6]q
resolvConf: /etc/resolv.conf
maxPods: 30
evictionHard: {memory.available: "50Mi", nodefs.available: "1%%", imagefs.available: "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
`, NodeIP, kport, filepath.Join(pki, "ca.crt"), cgroupRoot, c.CRISocket, filepath.Join(c.Dir, "pod-logs"))
	kubeletConfigPath := filepath.Join(c.Dir, "kubelet.yaml")
	if err := os.WriteFile(kubeletConfigPath, []byte(kubeletConfig), 0o644); err != nil {
		return fmt.Errorf("write kubelet config: %w", err)
	}
	if _, err := c.start("kubelet", "--config="+kubeletConfigPath,
		"--kubeconfig="+filepath.Join(pki, "kubelet.kubeconfig"),
		"--root-dir="+filepath.Join(c.Dir, "kubelet"),
		"--cert-dir="+filepath.Join(c.Dir, "kubelet", "pki"),
		"--hostname-override="+NodeName, "--node-ip="+NodeIP, "--v=1"); err != nil {
		return err
	}
	metricsPort, err := freePort()
	if err != nil {
		return err
	}
	healthPort, err := freePort()
	if err != nil {
		return err
	}
	proxyConfig := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: %q}
mode: iptables
clusterCIDR: %s
hostnameOverride: %s
metricsBindAddress: 127.0.0.1:%d
healthzBindAddress: 127.0.0.1:%d
nodePortAddresses: [%s/32]
iptables: {localhostNodePorts: false}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
`, filepath.Join(pki, "kube-proxy.kubeconfig"), PodCIDR, NodeName, metricsPort, healthPort, NodeIP)
	proxyConfigPath := filepath.Join(c.Dir, "kube-proxy.yaml")
	if err := os.WriteFile(proxyConfigPath, []byte(proxyConfig), 0o644); err != nil {
		return fmt.Errorf("write kube-proxy config: %w", err)
	}
	if _, err := c.start("kube-proxy", "--config="+proxyConfigPath, "--v=1"); err != nil {
		return err
	}
	kubelet := c.procs[len(c.procs)-2]
	return kubelet.WaitReady(ctx, 90*time.Second, func(ctx context.Context) bool {
		out, err := c.Kubectl(ctx, "get", "node", NodeName, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		return err == nil && strings.TrimSpace(out) == "True"
	})
}

// Kubectl runs kubectl as the admin and returns its output (stdout and
// stderr).
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	return run(ctx, filepath.Join(c.Bin, "kubectl"), append([]string{"--kubeconfig=" + c.Kubeconfig}, args...)...)
}

// KubectlStdin is Kubectl with stdin.
func (c *Cluster) KubectlStdin(ctx context.Context, stdin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.Bin, "kubectl"), append([]string{"--kubeconfig=" + c.Kubeconfig}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Log returns the log of a program of the cluster: "kubelet".
func (c *Cluster) Log(name string) string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, name+".log"))
	return string(b)
}

// removePods stops and removes every pod sandbox through CRI, so that
// the CNI plugins release their addresses, veths, rules and namespaces.
func (c *Cluster) removePods(ctx context.Context) error {
	conn, err := grpc.NewClient("unix://"+c.CRISocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dial cri: %w", err)
	}
	defer conn.Close()
	rs := runtimeapi.NewRuntimeServiceClient(conn)
	list, err := rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return fmt.Errorf("list pod sandboxes: %w", err)
	}
	var errs []error
	for _, s := range list.Items {
		if _, err := rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: s.Id}); err != nil {
			errs = append(errs, fmt.Errorf("stop pod %s: %w", s.Metadata.GetName(), err))
		}
		if _, err := rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: s.Id}); err != nil {
			errs = append(errs, fmt.Errorf("remove pod %s: %w", s.Metadata.GetName(), err))
		}
	}
	return errors.Join(errs...)
}

// killShims kills the shims and container processes whose state is under
// containerd's state directory (they outlive containerd).
func (c *Cluster) killShims() {
	filepath.WalkDir(filepath.Join(c.Dir, "containerd", "state"), func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if name := d.Name(); name == "init.pid" || name == "shim.pid" {
			if b, err := os.ReadFile(path); err == nil {
				if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
					syscallKill(pid)
				}
			}
		}
		return nil
	})
}

// Close stops the cluster and removes what it made: pods (through CRI,
// so CNI releases them), containerd's shims, kube-proxy's, the kubelet's
// and the CNI plugins' iptables chains, the bridge and its rules, the
// pods' cgroups, mounts, the kubelet's log links, the directory, and the
// host settings the components changed. Safe to call twice.
func (c *Cluster) Close() error {
	if c == nil || c.Dir == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var errs []error
	var containerd *daemon.Proc
	// Nothing may start or restart pods while they are removed.
	for i := len(c.procs) - 1; i >= 0; i-- {
		switch p := c.procs[i]; p.Name() {
		case "containerd":
			containerd = p
		case "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy":
			p.Stop(10 * time.Second)
		}
	}
	if containerd != nil {
		if err := c.removePods(ctx); err != nil {
			errs = append(errs, err)
		}
		c.killShims()
		containerd.Stop(10 * time.Second)
		c.killShims()
	}
	for _, p := range c.procs {
		p.Stop(10 * time.Second)
	}
	if _, err := os.Stat(filepath.Join(c.Bin, "kube-proxy")); err == nil {
		// Its own chains, in every mode it knows.
		run(ctx, filepath.Join(c.Bin, "kube-proxy"), "--cleanup")
	}
	for _, rule := range c.guard {
		if _, err := run(ctx, "iptables", append([]string{"-w", "-t", "mangle", "-D", "FORWARD"}, rule...)...); err != nil {
			errs = append(errs, err)
		}
	}
	if c.host != nil {
		if err := c.host.restoreChains(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := os.Stat("/sys/class/net/" + Bridge); err == nil {
		if _, err := run(ctx, "ip", "link", "del", Bridge); err != nil {
			errs = append(errs, err)
		}
	}
	if err := removeCgroups(cgroupRoots(cgroupRoot)); err != nil {
		errs = append(errs, err)
	}
	removeLogLinks(c.Dir)
	daemon.UnmountUnder(c.Dir)
	if err := os.RemoveAll(c.Dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", c.Dir, err))
	}
	if c.host != nil {
		if err := c.host.restoreSysctls(); err != nil {
			errs = append(errs, err)
		}
	}
	c.Dir = ""
	return errors.Join(errs...)
}
