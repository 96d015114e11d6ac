package topology

import (
	"fmt"
	"time"

	"github.com/flowmap/flowmap/model"
)

// Level is how coarsely a snapshot groups endpoints into nodes.
type Level string

// The levels, finest first. An endpoint that lacks what a level groups by
// (an outside address has no workload) stays at the finest level it has.
const (
	// LevelContainer is the endpoint as the inventory names it.
	LevelContainer Level = "container"
	// LevelPod groups a pod's containers (by the CRI labels
	// io.kubernetes.pod.uid and io.kubernetes.pod.name).
	LevelPod Level = "pod"
	// LevelWorkload groups by Endpoint.Namespace and Endpoint.Workload.
	LevelWorkload Level = "workload"
	// LevelNamespace groups by Endpoint.Namespace.
	LevelNamespace Level = "namespace"
	// LevelHost groups by Endpoint.Node, the machine.
	LevelHost Level = "host"
)

// Levels lists the levels, finest first.
var Levels = []Level{LevelContainer, LevelPod, LevelWorkload, LevelNamespace, LevelHost}

// ParseLevel returns the level named s, or an error naming the levels.
func ParseLevel(s string) (Level, error) {
	for _, l := range Levels {
		if string(l) == s {
			return l, nil
		}
	}
	return "", fmt.Errorf("level %q: want container, pod, workload, namespace or host", s)
}

// Set implements flag.Value.
func (l *Level) Set(s string) error {
	v, err := ParseLevel(s)
	if err != nil {
		return err
	}
	*l = v
	return nil
}

func (l Level) String() string { return string(l) }

// The windows a graph keeps, and their names.
var (
	Windows     = []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute, time.Hour}
	windowNames = []string{"1m", "5m", "15m", "1h"}
)

// ParseWindow returns the window named s: 1m, 5m, 15m or 1h.
func ParseWindow(s string) (time.Duration, error) {
	for i, n := range windowNames {
		if n == s {
			return Windows[i], nil
		}
	}
	return 0, fmt.Errorf("window %q: want 1m, 5m, 15m or 1h", s)
}

// windowName returns a window's name, or its duration's string.
func windowName(d time.Duration) string {
	for i, w := range Windows {
		if w == d {
			return windowNames[i]
		}
	}
	return d.String()
}

// Node kinds that are not endpoint kinds: what an endpoint was rolled up
// into, and the one node past the edge cap.
const (
	KindWorkload  model.EndpointKind = "workload"
	KindNamespace model.EndpointKind = "namespace"
	KindOverflow  model.EndpointKind = "overflow"
)

// The CRI labels of a pod's containers.
const (
	labelPodUID       = "io.kubernetes.pod.uid"
	labelPodName      = "io.kubernetes.pod.name"
	labelPodNamespace = "io.kubernetes.pod.namespace"
)

// nodeOf returns the node that stands for ep at level l: its ID, kind and
// name, and where it lives.
func nodeOf(ep *model.Endpoint, l Level) Node {
	if ep.Kind == model.KindService {
		// Between its clients and its backends at every level (service.go).
		return endpointNode(ep)
	}
	switch l {
	case LevelHost:
		if ep.Node != "" {
			n := Node{ID: "host:" + ep.Node, Kind: model.KindHost, Name: ep.Node, Host: ep.Node}
			if ep.Kind == model.KindHost {
				// What runs on the machine says nothing of its labels.
				n.Labels, n.Zone = ep.Labels, zoneOf(ep.Labels)
			}
			return n
		}
		if ep.Kind == model.KindHost {
			return endpointNode(ep)
		}
		if ep.Kind != model.KindExternal && ep.Kind != model.KindUnknown && ep.Kind != KindOverflow {
			// Somewhere on a machine the inventory did not name.
			return Node{ID: "host:", Kind: model.KindHost, Name: "unknown host"}
		}
		return endpointNode(ep)
	case LevelNamespace:
		if ep.Namespace != "" {
			return Node{ID: "namespace:" + ep.Namespace, Kind: KindNamespace, Name: ep.Namespace,
				Namespace: ep.Namespace, Host: ep.Node, Image: ep.Image, Zone: zoneOf(ep.Labels), Labels: ep.Labels}
		}
		return nodeOf(ep, LevelWorkload)
	case LevelWorkload:
		if ep.Workload != "" {
			return Node{ID: "workload:" + ep.Namespace + "/" + ep.Workload, Kind: KindWorkload, Name: ep.Workload,
				Namespace: ep.Namespace, Workload: ep.Workload, WorkloadKind: ep.WorkloadKind, Host: ep.Node,
				Image: ep.Image, Zone: zoneOf(ep.Labels), Labels: ep.Labels}
		}
		return nodeOf(ep, LevelPod)
	case LevelPod:
		if uid := ep.Labels[labelPodUID]; uid != "" && ep.Kind == model.KindContainer {
			ns := ep.Labels[labelPodNamespace]
			if ns == "" {
				ns = ep.Namespace
			}
			return Node{ID: "pod:" + uid, Kind: model.KindPod, Name: ep.Labels[labelPodName], Namespace: ns,
				Workload: ep.Workload, WorkloadKind: ep.WorkloadKind, Host: ep.Node, Addrs: ep.Addrs,
				Image: ep.Image, Zone: zoneOf(ep.Labels), Labels: ep.Labels}
		}
	}
	return endpointNode(ep)
}

func endpointNode(ep *model.Endpoint) Node {
	n := Node{ID: string(ep.Kind) + ":" + ep.ID, Kind: ep.Kind, Name: ep.Name, Namespace: ep.Namespace,
		Workload: ep.Workload, WorkloadKind: ep.WorkloadKind, Host: ep.Node, Addrs: ep.Addrs,
		NameSource: ep.NameSource,
		Image:      ep.Image, Zone: zoneOf(ep.Labels), Labels: ep.Labels}
	if n.Name == "" {
		n.Name = ep.ID
	}
	if ep.Kind == model.KindHost && n.Host == "" {
		n.Host = n.Name
	}
	return n
}
