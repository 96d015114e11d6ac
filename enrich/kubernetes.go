package enrich

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flowmap/flowmap/model"
)

// kubeSource reads the Kubernetes API through client-go informers: pods
// (address → pod, owner chain → workload), Services (cluster and load
// balancer addresses → service), EndpointSlices (endpoints that are not
// pods → their service) and Nodes (node addresses → node). ReplicaSets
// and Jobs are watched to follow a pod's owners to its Deployment or
// CronJob.
type kubeSource struct {
	config *rest.Config
}

func newKubeSource(kubeconfig string, inCluster bool) (*kubeSource, error) {
	var cfg *rest.Config
	var err error
	if inCluster {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("load in-cluster kubernetes config: %w", err)
		}
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
		}
	}
	cfg.UserAgent = "flowmap"
	return &kubeSource{config: cfg}, nil
}

// kubeInformers are the informers the source reads from.
type kubeInformers struct {
	pods        cache.SharedIndexInformer
	services    cache.SharedIndexInformer
	slices      cache.SharedIndexInformer
	nodes       cache.SharedIndexInformer
	replicaSets cache.SharedIndexInformer
	jobs        cache.SharedIndexInformer
}

func (k *kubeSource) run(ctx context.Context, s *sourceState) error {
	client, err := kubernetes.NewForConfig(k.config)
	if err != nil {
		return fmt.Errorf("make kubernetes client: %w", err)
	}
	core, apps, batch, disc := client.CoreV1(), client.AppsV1(), client.BatchV1(), client.DiscoveryV1()
	node := s.inv.cfg.Node
	pods := lister[*corev1.PodList](core.Pods(""))
	if node != "" {
		// This node's pods only, as the kubelet watches them (the API
		// server indexes pods by spec.nodeName in its watch cache): each
		// agent is sent its own node's pods, not every pod of the
		// cluster. Pods elsewhere are named from EndpointSlices (see
		// kubeRecords and docs/scale.md).
		pods = fieldSelected[*corev1.PodList]{pods, "spec.nodeName=" + node}
	}
	inf := kubeInformers{
		pods:        informerOf(s, "pods", &corev1.Pod{}, pods),
		services:    informerOf(s, "services", &corev1.Service{}, core.Services("")),
		slices:      informerOf(s, "endpointslices", &discoveryv1.EndpointSlice{}, disc.EndpointSlices("")),
		nodes:       informerOf(s, "nodes", &corev1.Node{}, core.Nodes()),
		replicaSets: informerOf(s, "replicasets", &appsv1.ReplicaSet{}, apps.ReplicaSets("")),
		jobs:        informerOf(s, "jobs", &batchv1.Job{}, batch.Jobs("")),
	}
	changed := make(chan struct{}, 1)
	notify := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { notify() },
		UpdateFunc: func(any, any) { notify() },
		DeleteFunc: func(any) { notify() },
	}
	all := []cache.SharedIndexInformer{inf.pods, inf.services, inf.slices, inf.nodes, inf.replicaSets, inf.jobs}
	transforms := []cache.TransformFunc{slimPod, slimService, slimSlice, slimNode, slimOwned, slimOwned}
	for n, i := range all {
		// What we do not read need not stay in memory: each informer
		// keeps only the fields kubeRecords reads (no env values, specs,
		// annotations or managed fields).
		if err := i.SetTransform(transforms[n]); err != nil {
			return fmt.Errorf("set informer transform: %w", err)
		}
		// Lists and watches that fail (the API server is unreachable,
		// refuses us) end the reflector's ListAndWatch: reported here.
		if err := i.SetWatchErrorHandlerWithContext(func(_ context.Context, r *cache.Reflector, err error) {
			// client-go retries by itself, resuming the watch where it can
			// and listing again where it cannot.
			s.fail("watch", fmt.Errorf("kubernetes watch %s: %w", r.TypeDescription(), err))
		}); err != nil {
			return fmt.Errorf("set watch error handler: %w", err)
		}
		if _, err := i.AddEventHandler(handler); err != nil {
			return fmt.Errorf("add informer handler: %w", err)
		}
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, i := range all {
		wg.Go(func() { i.RunWithContext(ctx) })
	}
	synced := make([]cache.InformerSynced, len(all))
	for n, i := range all {
		synced[n] = i.HasSynced
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil // ctx is done
	}
	for {
		s.publish(kubeRecords(inf, s.inv.cfg.Node))
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
		// Let a burst of changes (a rollout) land in one publish.
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// lister lists and watches one kind of object, as client-go's typed
// clients do (core.Pods(""), apps.ReplicaSets("") …); L is its list type.
type lister[L runtime.Object] interface {
	List(context.Context, metav1.ListOptions) (L, error)
	Watch(context.Context, metav1.ListOptions) (watch.Interface, error)
}

// informerOf makes newInformer's informer of the objects c lists.
func informerOf[L runtime.Object](s *sourceState, what string, obj runtime.Object, c lister[L]) cache.SharedIndexInformer {
	return newInformer(s, what, obj,
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return c.List(ctx, o) },
		c.Watch)
}

// newInformer makes an informer of what's objects, whose watches report
// the errors the API server sends in them (a garbled event, a server
// error): client-go logs those and watches again, but does not hand them
// to the watch error handler.
func newInformer(s *sourceState, what string, obj runtime.Object,
	list cache.ListWithContextFunc, watchFn cache.WatchFuncWithContext) cache.SharedIndexInformer {
	lw := &cache.ListWatch{
		ListWithContextFunc: list,
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			w, err := watchFn(ctx, o)
			if err != nil {
				return nil, err
			}
			return watch.Filter(w, func(ev watch.Event) (watch.Event, bool) {
				if ev.Type == watch.Error {
					err := apierrors.FromObject(ev.Object)
					// An expired resource version is routine: the
					// reflector lists again.
					if !apierrors.IsResourceExpired(err) && !apierrors.IsGone(err) {
						s.bad("watch", fmt.Errorf("kubernetes watch %s: %w", what, err))
					}
				}
				return ev, true
			}), nil
		},
	}
	return cache.NewSharedIndexInformer(lw, obj, 0, cache.Indexers{})
}

// fieldSelected is a lister whose lists and watches carry a field
// selector.
type fieldSelected[L runtime.Object] struct {
	lister[L]
	selector string
}

func (f fieldSelected[L]) List(ctx context.Context, o metav1.ListOptions) (L, error) {
	o.FieldSelector = f.selector
	return f.lister.List(ctx, o)
}

func (f fieldSelected[L]) Watch(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
	o.FieldSelector = f.selector
	return f.lister.Watch(ctx, o)
}

// slimMeta is the metadata kubeRecords reads: name, namespace, UID,
// labels, owners, and the resource version the informer resumes from.
func slimMeta(m *metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion,
		Labels: m.Labels, OwnerReferences: m.OwnerReferences}
}

// The informers' transforms: each returns a new object with only what
// kubeRecords reads, and passes on what is not its type (a
// cache.DeletedFinalStateUnknown).

func slimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	out := &corev1.Pod{ObjectMeta: slimMeta(&p.ObjectMeta)}
	out.Spec.NodeName, out.Spec.HostNetwork = p.Spec.NodeName, p.Spec.HostNetwork
	if len(p.Spec.Containers) > 0 {
		out.Spec.Containers = []corev1.Container{{Name: p.Spec.Containers[0].Name, Image: p.Spec.Containers[0].Image}}
	}
	out.Status.Phase, out.Status.PodIP, out.Status.PodIPs = p.Status.Phase, p.Status.PodIP, p.Status.PodIPs
	for _, c := range p.Status.ContainerStatuses {
		out.Status.ContainerStatuses = append(out.Status.ContainerStatuses, corev1.ContainerStatus{Name: c.Name, ContainerID: c.ContainerID})
	}
	return out, nil
}

// protoSCTP is SCTP's IP protocol number.
const protoSCTP model.Proto = 132

func slimService(obj any) (any, error) {
	s, ok := obj.(*corev1.Service)
	if !ok {
		return obj, nil
	}
	out := &corev1.Service{ObjectMeta: slimMeta(&s.ObjectMeta)}
	out.Spec.ClusterIPs, out.Spec.ExternalIPs = s.Spec.ClusterIPs, s.Spec.ExternalIPs
	for _, p := range s.Spec.Ports {
		if p.NodePort != 0 {
			out.Spec.Ports = append(out.Spec.Ports, corev1.ServicePort{Protocol: p.Protocol, NodePort: p.NodePort})
		}
	}
	for _, in := range s.Status.LoadBalancer.Ingress {
		out.Status.LoadBalancer.Ingress = append(out.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: in.IP})
	}
	return out, nil
}

func slimSlice(obj any) (any, error) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return obj, nil
	}
	out := &discoveryv1.EndpointSlice{ObjectMeta: slimMeta(&es.ObjectMeta), AddressType: es.AddressType}
	for _, e := range es.Endpoints {
		out.Endpoints = append(out.Endpoints, discoveryv1.Endpoint{Addresses: e.Addresses, TargetRef: e.TargetRef, NodeName: e.NodeName})
	}
	return out, nil
}

func slimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	out := &corev1.Node{ObjectMeta: slimMeta(&n.ObjectMeta)}
	out.Status.Addresses = n.Status.Addresses
	return out, nil
}

// slimOwned keeps a ReplicaSet's or a Job's metadata: its owners are all
// workload reads (a ReplicaSet's pod template holds env values).
func slimOwned(obj any) (any, error) {
	switch o := obj.(type) {
	case *appsv1.ReplicaSet:
		return &appsv1.ReplicaSet{ObjectMeta: slimMeta(&o.ObjectMeta)}, nil
	case *batchv1.Job:
		return &batchv1.Job{ObjectMeta: slimMeta(&o.ObjectMeta)}, nil
	}
	return obj, nil
}

// kubeRecords makes the records of everything the informers hold; node is
// this machine's name, to join its Node with the host source.
func kubeRecords(inf kubeInformers, node string) []record {
	var recs []record
	for _, obj := range inf.pods.GetStore().List() {
		p, ok := obj.(*corev1.Pod)
		if !ok || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		recs = append(recs, podRecord(p, inf))
	}
	services := make(map[string]*corev1.Service) // by namespace/name
	for _, obj := range inf.services.GetStore().List() {
		svc, ok := obj.(*corev1.Service)
		if !ok {
			continue
		}
		services[svc.Namespace+"/"+svc.Name] = svc
		ep := model.Endpoint{Kind: model.KindService, ID: string(svc.UID), Name: svc.Name, Namespace: svc.Namespace, Labels: svc.Labels}
		// ClusterIPs the API server allocates from the service range;
		// externalIPs and load-balancer ingress are anyone's to write
		// (the Service's author, a controller): claims, not owners.
		ep.Addrs = parseAddrs(svc.Spec.ClusterIPs)
		claims := slices.Clone(svc.Spec.ExternalIPs)
		for _, in := range svc.Status.LoadBalancer.Ingress {
			claims = append(claims, in.IP)
		}
		rec := record{ep: ep, claims: parseAddrs(claims)}
		for _, p := range svc.Spec.Ports {
			if p.NodePort == 0 {
				continue
			}
			k := portKey{proto: model.ProtoTCP, port: uint16(p.NodePort)}
			switch p.Protocol {
			case corev1.ProtocolUDP:
				k.proto = model.ProtoUDP
			case corev1.ProtocolSCTP:
				k.proto = protoSCTP
			}
			rec.nodePorts = append(rec.nodePorts, k)
		}
		if len(rec.ep.Addrs) > 0 || len(rec.claims) > 0 || len(rec.nodePorts) > 0 {
			recs = append(recs, rec)
		}
	}
	for _, obj := range inf.slices.GetStore().List() {
		es, ok := obj.(*discoveryv1.EndpointSlice)
		if !ok {
			continue
		}
		name := es.Labels[discoveryv1.LabelServiceName]
		if name == "" {
			continue
		}
		id := es.Namespace + "/" + name
		var svcLabels map[string]string
		if svc, ok := services[id]; ok {
			id, svcLabels = string(svc.UID), svc.Labels
		}
		for _, e := range es.Endpoints {
			if e.TargetRef != nil && e.TargetRef.Kind == "Pod" {
				// The pod names it where the pods informer has it (all
				// pods, or this node's). A pod on another node is named
				// from its slice, as the pod the endpoints controller
				// found there, and only if the slice says which node (a
				// claim of the pod's own address, which the node's pods
				// informer does not see). Its workload is unknown here.
				if node != "" && e.NodeName != nil && *e.NodeName != node {
					ep := model.Endpoint{Kind: model.KindPod, ID: string(e.TargetRef.UID), Name: e.TargetRef.Name,
						Namespace: e.TargetRef.Namespace, Node: *e.NodeName}
					if addrs := parseAddrs(e.Addresses); len(addrs) > 0 {
						recs = append(recs, record{ep: ep, claims: addrs})
					}
				}
				continue
			}
			// An endpoint that is not a pod (a database VM behind a
			// selectorless service) is known only as its service's, and
			// only where nothing the platform assigned has its address:
			// the slice's author wrote it.
			ep := model.Endpoint{Kind: model.KindService, ID: id, Name: name, Namespace: es.Namespace, Labels: svcLabels}
			if claims := parseAddrs(e.Addresses); len(claims) > 0 {
				recs = append(recs, record{ep: ep, claims: claims})
			}
		}
	}
	for _, obj := range inf.nodes.GetStore().List() {
		n, ok := obj.(*corev1.Node)
		if !ok {
			continue
		}
		ep := model.Endpoint{Kind: model.KindHost, ID: n.Name, Name: n.Name, Node: n.Name, Labels: n.Labels}
		var ips []string
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP || a.Type == corev1.NodeExternalIP {
				ips = append(ips, a.Address)
			}
		}
		ep.Addrs = parseAddrs(ips)
		rec := record{ep: ep}
		if n.Name == node {
			rec.keys = []joinKey{hostKey()}
		}
		recs = append(recs, rec)
	}
	return recs
}

// podRecord names a pod, its workload through its owners, and the
// containers that the netns and CRI sources know by id.
func podRecord(p *corev1.Pod, inf kubeInformers) record {
	ep := model.Endpoint{
		Kind:      model.KindPod,
		ID:        string(p.UID),
		Name:      p.Name,
		Namespace: p.Namespace,
		Node:      p.Spec.NodeName,
		Labels:    p.Labels,
	}
	if len(p.Spec.Containers) > 0 {
		ep.Image = p.Spec.Containers[0].Image
	}
	ep.Workload, ep.WorkloadKind = workload(p.Namespace, p.OwnerReferences, inf)
	// A pod on the host's network has the node's addresses: they name the
	// node, not the pod.
	if !p.Spec.HostNetwork {
		ips := make([]string, 0, len(p.Status.PodIPs))
		for _, ip := range p.Status.PodIPs {
			ips = append(ips, ip.IP)
		}
		if len(ips) == 0 && p.Status.PodIP != "" {
			ips = append(ips, p.Status.PodIP)
		}
		ep.Addrs = parseAddrs(ips)
	}
	rec := record{ep: ep, keys: []joinKey{podKey(string(p.UID))}}
	for _, st := range p.Status.ContainerStatuses {
		// containerd://<id>, cri-o://<id>, docker://<id>
		if _, id, ok := strings.Cut(st.ContainerID, "://"); ok && id != "" {
			rec.keys = append(rec.keys, containerKey(id))
		}
	}
	return rec
}

// workload follows a pod's controller up: ReplicaSet → Deployment, Job →
// CronJob; StatefulSet, DaemonSet and others are their own. It returns
// "" for a bare pod.
func workload(ns string, owners []metav1.OwnerReference, inf kubeInformers) (name, kind string) {
	ref := controllerOf(owners)
	if ref == nil {
		return "", ""
	}
	switch ref.Kind {
	case "ReplicaSet":
		if obj, ok, _ := inf.replicaSets.GetStore().GetByKey(ns + "/" + ref.Name); ok {
			if rs, ok := obj.(*appsv1.ReplicaSet); ok {
				if up := controllerOf(rs.OwnerReferences); up != nil {
					return up.Name, up.Kind
				}
			}
		}
	case "Job":
		if obj, ok, _ := inf.jobs.GetStore().GetByKey(ns + "/" + ref.Name); ok {
			if job, ok := obj.(*batchv1.Job); ok {
				if up := controllerOf(job.OwnerReferences); up != nil {
					return up.Name, up.Kind
				}
			}
		}
	}
	return ref.Name, ref.Kind
}

func controllerOf(owners []metav1.OwnerReference) *metav1.OwnerReference {
	for i := range owners {
		if owners[i].Controller != nil && *owners[i].Controller {
			return &owners[i]
		}
	}
	return nil
}

func parseAddrs(ss []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		if a, err := netip.ParseAddr(s); err == nil && !a.IsUnspecified() {
			out = append(out, a.Unmap())
		}
	}
	return out
}
