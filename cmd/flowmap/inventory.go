package main

import (
	"flag"
	"os"
	"time"

	"github.com/flowmap/flowmap/enrich"
)

// inventoryFlags select the inventory's sources.
type inventoryFlags struct {
	cfg enrich.Config
	off bool
}

// Default sockets: a source whose socket exists at start is on unless its
// flag says otherwise.
var (
	defaultDockerSockets = []string{"/run/docker.sock", "/var/run/docker.sock"}
	defaultPodmanSockets = []string{"/run/podman/podman.sock"}
	defaultCRISockets    = []string{"/run/containerd/containerd.sock", "/run/crio/crio.sock"}
)

func firstExisting(paths []string) string {
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

func (f *inventoryFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&f.off, "no-inventory", false, "name the ends of flows by address alone: no inventory sources at all")
	fs.BoolVar(&f.cfg.NetNS, "netns", true, "name containers from the namespaces behind veths, their processes and cgroups (no runtime API needed)")
	fs.StringVar(&f.cfg.DockerSocket, "docker-socket", firstExisting(defaultDockerSockets), "Docker Engine API socket; empty turns the source off (default: the first of /run/docker.sock, /var/run/docker.sock that exists)")
	fs.StringVar(&f.cfg.PodmanSocket, "podman-socket", firstExisting(defaultPodmanSockets), "Podman's Docker-compatible API socket; empty turns the source off (default: /run/podman/podman.sock if it exists)")
	fs.StringVar(&f.cfg.CRISocket, "cri-socket", firstExisting(defaultCRISockets), "CRI runtime socket (containerd, CRI-O); empty turns the source off (default: the first that exists of the usual paths)")
	fs.StringVar(&f.cfg.Kubeconfig, "kubeconfig", "", "kubeconfig file for the Kubernetes source")
	fs.BoolVar(&f.cfg.KubeInCluster, "kube-in-cluster", false, "use the pod's service account for the Kubernetes source")
	fs.StringVar(&f.cfg.Cloud, "cloud", "", "cloud metadata source: auto, aws, gcp or azure; empty turns it off")
	fs.StringVar(&f.cfg.CloudEndpoint, "cloud-endpoint", "", "base URL of the cloud metadata service (default http://169.254.169.254)")
	fs.DurationVar(&f.cfg.CloudTimeout, "cloud-timeout", 2*time.Second, "timeout of each cloud metadata request")
	fs.StringVar(&f.cfg.CIDRFile, "cidr-file", "", "file of CIDR → name lines naming addresses no other source owns")
	fs.IntVar(&f.cfg.MaxEndpoints, "max-endpoints", 65536, "entries in each of the inventory's caches")
	fs.IntVar(&f.cfg.MaxHistoryBytes, "owner-history-max-bytes", enrich.DefaultHistoryBytes,
		"bound on the memory of the past owners of addresses and namespace ids, which name a flow by who held its address when it was seen; the oldest go first")
}
