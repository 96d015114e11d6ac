package enrich

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flowmap/flowmap/model"
)

// criSource reads a CRI runtime (containerd, CRI-O) over gRPC: its ready
// pod sandboxes, with their addresses and Kubernetes labels, and their
// running containers. It polls: a new pod is seen by the netns source as
// soon as its veth appears, and named here at the next poll.
type criSource struct {
	socket string
	resync time.Duration
}

func (c *criSource) run(ctx context.Context, s *sourceState) error {
	// grpc.NewClient does not connect: a runtime that is not up yet is
	// reported by the first call.
	conn, err := grpc.NewClient("unix://"+c.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("make cri client for %s: %w", c.socket, err)
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	poll := min(c.resync, 5*time.Second)
	failures := 0
	for {
		recs, err := c.sync(ctx, rt, s)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.fail("cri", err)
			failures++
			if !backoff(ctx, failures-1) {
				return nil
			}
			continue
		}
		failures = 0
		s.publish(recs)
		if !sleep(ctx, poll) {
			return nil
		}
	}
}

// sync lists the ready sandboxes and running containers, one record a pod.
func (c *criSource) sync(ctx context.Context, rt runtimeapi.RuntimeServiceClient, s *sourceState) ([]record, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	pods, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		State: &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY},
	}})
	if err != nil {
		return nil, fmt.Errorf("list pod sandboxes from %s: %w", c.socket, err)
	}
	ctrs, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING},
	}})
	if err != nil {
		return nil, fmt.Errorf("list containers from %s: %w", c.socket, err)
	}
	bySandbox := make(map[string][]*runtimeapi.Container)
	for _, ctr := range ctrs.GetContainers() {
		bySandbox[ctr.GetPodSandboxId()] = append(bySandbox[ctr.GetPodSandboxId()], ctr)
	}
	var recs []record
	for _, p := range pods.GetItems() {
		md := p.GetMetadata()
		if md.GetUid() == "" || md.GetName() == "" {
			s.bad("decode", fmt.Errorf("pod sandbox %s from %s: no name or uid", p.GetId(), c.socket))
			continue
		}
		ep := model.Endpoint{
			Kind:      model.KindPod,
			ID:        md.GetUid(),
			Name:      md.GetName(),
			Namespace: md.GetNamespace(),
			Labels:    p.GetLabels(),
		}
		rec := record{keys: []joinKey{podKey(md.GetUid()), containerKey(p.GetId())}}
		for _, ctr := range bySandbox[p.GetId()] {
			rec.keys = append(rec.keys, containerKey(ctr.GetId()))
			if ep.Image == "" {
				ep.Image = ctr.GetImage().GetUserSpecifiedImage()
				if ep.Image == "" {
					ep.Image = ctr.GetImage().GetImage()
				}
			}
		}
		st, err := rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: p.GetId()})
		if err != nil {
			// The pod may be going: name it without its addresses.
			s.bad("cri", fmt.Errorf("pod sandbox status %s from %s: %w", p.GetId(), c.socket, err))
		} else if st.GetStatus().GetLinux().GetNamespaces().GetOptions().GetNetwork() != runtimeapi.NamespaceMode_NODE {
			// A pod on the host's network has the node's addresses: those
			// name the node, not the pod.
			net := st.GetStatus().GetNetwork()
			ips := []string{net.GetIp()}
			for _, ip := range net.GetAdditionalIps() {
				ips = append(ips, ip.GetIp())
			}
			for _, ip := range ips {
				if a, err := netip.ParseAddr(ip); err == nil {
					ep.Addrs = append(ep.Addrs, a.Unmap())
				}
			}
		}
		rec.ep = ep
		recs = append(recs, rec)
	}
	return recs, nil
}
