// Package enrich names the ends of flows: it keeps an inventory of who is
// behind each address (network namespaces and their processes, containers,
// Kubernetes pods, services and workloads, the cloud instance, user-named
// CIDRs) and resolves each end of a Record to an Endpoint from
// bounded caches, so that the hot path never calls a runtime.
//
// # Sources
//
// Each source is optional and selected by a Config field; each reports in
// Status (up, last sync, endpoints known, last error) and counts its errors
// by reason in the Collector's flowmap_enrich_source_errors_total.
//
//   - host (always on): this machine's name and addresses, followed through
//     netlink address events.
//   - netns (Config.NetNS): for each host-side veth, the namespace of its
//     peer (its netlink namespace id, matched against /proc/*/ns/net and the
//     bind mounts in /run/netns), the processes in it, their cgroups, and the
//     container id and pod UID in the cgroup path (see ParseCgroupPath).
//     Needs no runtime API: with the engine's socket gone a container is
//     still named, by its short id, with the runtime that the path names in
//     the label flowmap.runtime; a namespace without container is
//     model.KindNetNS, named by its name under /run/netns. Rescans after link events, so a new
//     container is seen within a second or so.
//   - docker, podman (Config.DockerSocket, Config.PodmanSocket): the Docker
//     Engine API, or Podman's Docker-compatible one, on a unix socket: name,
//     image, labels, addresses, network namespace; /events followed, so a new
//     container is named within about half a second of docker run.
//   - cri (Config.CRISocket): the CRI runtime service (containerd, CRI-O):
//     ready pod sandboxes with their addresses and Kubernetes labels, and
//     their containers' images; polled every 5s.
//   - kubernetes (Config.Kubeconfig or KubeInCluster): client-go informers
//     on pods (owner chain → workload: ReplicaSet → Deployment, Job →
//     CronJob, StatefulSet, DaemonSet), Services (cluster, external and load
//     balancer addresses), EndpointSlices (endpoints that are not pods, as
//     their service) and Nodes.
//   - cloud (Config.Cloud): the instance metadata service of AWS (IMDSv2),
//     GCP or Azure, once at start; its answer labels the host endpoint
//     (cloud.provider, cloud.region, host.id, …). Off-cloud is normal: the
//     source is up with a Detail that says so.
//   - cidr (Config.CIDRFile): a file of CIDR → name lines (see ParseCIDRs)
//     naming addresses that no other source owns; read again when it
//     changes.
//
// # Joining sources
//
// Sources publish records; the inventory joins the records that share a
// container id, a pod UID, a network namespace or an address into one
// endpoint. Its kind, id and source come from the most trusted record that
// says what it is (kubernetes, then cri, then docker/podman, then netns, then
// host and cloud); each other field from the most trusted record that has
// it; labels and addresses are the union. So a pod is named by Kubernetes,
// with its image from CRI and its namespace inodes from netns, and a Docker
// container by the engine, with its PID namespace from netns.
//
// # Resolving
//
// Resolve reads three LRU caches (github.com/hashicorp/golang-lru/v2) of
// MaxEndpoints entries each: by the peer namespace id of the veth behind
// which the address was seen, by address, and of answers for addresses no
// source owns. It makes no call and allocates nothing once an address has
// been seen (35 to 50 ns for a known address, about 100 ns for an external
// one, on the 2-core machine this was written on; BenchmarkResolve). An address behind a veth that no source knows is
// model.KindUnknown; any other unowned address model.KindExternal, named by the CIDR
// file where a line covers it, else by itself (for the DNS names a later
// stage may add).
//
// A source that fails keeps what it last published: a dying engine loses
// no name, and the next sync replaces what changed.
package enrich
