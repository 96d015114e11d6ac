package enrich_test

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flowmap/flowmap/enrich"
	"github.com/flowmap/flowmap/internal/dockertest"
	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
)

// TestCRI runs a real containerd with its CRI plugin, makes a pod through
// the CRI API as the kubelet does, and checks that the CRI source names it
// by pod name, namespace, labels and image, joined with what the netns
// source finds of it; and that the netns source alone knows it as a pod
// by the UID in its cgroup path.
func TestCRI(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveCommand(t, "busybox")
	c := dockertest.StartContainerdT(t, dockertest.Options{Prefix: "fme", Subnet: netip.MustParsePrefix("198.51.100.224/28")})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const image = "docker.io/library/fme-busybox:1"
	if err := c.ImportImage(ctx, image, []string{"/bin/sh"}); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("unix://"+c.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() }) // after the pod's cleanup below
	rt := runtimeapi.NewRuntimeServiceClient(conn)

	const uid = "6c1f8b2e-4a5d-4e3f-9b2a-1c0d2e3f4a5b"
	labels := map[string]string{
		"app":                         "checkout",
		"io.kubernetes.pod.name":      "checkout-7d9f-abcde",
		"io.kubernetes.pod.namespace": "shop",
		"io.kubernetes.pod.uid":       uid,
	}
	sandbox := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "checkout-7d9f-abcde", Uid: uid, Namespace: "shop"},
		Hostname:     "checkout",
		LogDirectory: filepath.Join(c.Dir, "pods", uid),
		Labels:       labels,
		// As the kubelet's cgroupfs driver puts a BestEffort pod.
		Linux: &runtimeapi.LinuxPodSandboxConfig{CgroupParent: "/kubepods/besteffort/pod" + uid},
	}
	run, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sandbox})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	podID := run.GetPodSandboxId()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// Through CRI, so that CNI releases the namespace and address.
		if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: podID}); err != nil {
			t.Errorf("StopPodSandbox: %v", err)
		}
		if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID}); err != nil {
			t.Errorf("RemovePodSandbox: %v", err)
		}
	})
	created, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: podID,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "checkout"},
			Image:    &runtimeapi.ImageSpec{Image: image},
			Command:  []string{"/bin/sleep", "3600"},
			Labels:   labels,
			LogPath:  "checkout.log",
		},
		SandboxConfig: sandbox,
	})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if _, err := rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: created.GetContainerId()}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	st, err := rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: podID})
	if err != nil {
		t.Fatalf("PodSandboxStatus: %v", err)
	}
	ip, err := netip.ParseAddr(st.GetStatus().GetNetwork().GetIp())
	if err != nil || !c.Subnet.Contains(ip) {
		t.Fatalf("pod address %q, want one in %v", st.GetStatus().GetNetwork().GetIp(), c.Subnet)
	}

	t.Run("cri", func(t *testing.T) {
		inv := startInventory(t, enrich.Config{CRISocket: c.Socket, NetNS: true, Logger: testLogger(t)})
		ep, took := waitNamed(t, inv, ip, 10*time.Second, func(ep model.Endpoint) bool { return ep.Source == "cri" && ep.NetNS != 0 })
		t.Logf("pod named in %v: %+v", took, ep)
		if ep.Kind != model.KindPod || ep.ID != uid || ep.Name != "checkout-7d9f-abcde" || ep.Namespace != "shop" ||
			ep.Image != image || ep.Labels["app"] != "checkout" || ep.Source != "cri" {
			t.Errorf("Resolve(%v) = %+v, want pod %s checkout-7d9f-abcde in shop, image %s, app=checkout, from cri", ip, ep, uid, image)
		}
		if ep.NetNS == 0 || ep.PIDNS == 0 {
			t.Errorf("Resolve(%v) has netns %d, pidns %d: the netns source's record was not joined", ip, ep.NetNS, ep.PIDNS)
		}
	})

	// The pod outlives a restart of containerd, and the CRI source lists
	// containerd again within its poll (5 s) and its longest back-off
	// (2 s) of containerd's return, and names the pod from it.
	t.Run("containerd restarted", func(t *testing.T) {
		inv := startInventory(t, enrich.Config{CRISocket: c.Socket, NetNS: true, Logger: testLogger(t)})
		if ep, took := waitNamed(t, inv, ip, 10*time.Second, func(ep model.Endpoint) bool { return ep.Source == "cri" }); ep.Source != "cri" {
			t.Fatalf("pod not named from cri within %v: %+v", took, ep)
		}
		if err := c.Restart(ctx); err != nil {
			t.Fatalf("restart containerd: %v", err)
		}
		back := time.Now()
		if took, limit := waitRelisted(t, inv, "cri", back), 8*time.Second; took > limit {
			t.Errorf("the cri source listed containerd again %v after it answered, want within %v", took, limit)
		}
		if ep := inv.Resolve(ip, model.Interface{}); ep.Source != "cri" || ep.Name != "checkout-7d9f-abcde" {
			t.Errorf("after the restart Resolve(%v) = %s %q from %q, want the pod from cri", ip, ep.Kind, ep.Name, ep.Source)
		}
	})

	t.Run("netns only", func(t *testing.T) {
		inv := startInventory(t, enrich.Config{NetNS: true, Logger: testLogger(t)})
		ep, _ := waitNamed(t, inv, ip, 5*time.Second, func(ep model.Endpoint) bool { return ep.Kind == model.KindPod })
		if ep.Kind != model.KindPod || ep.ID != uid || ep.Source != "netns" {
			t.Errorf("Resolve(%v) = %s %q from %q, want pod %s from netns", ip, ep.Kind, ep.ID, ep.Source, uid)
		}
	})
}
