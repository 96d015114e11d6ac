package enrich

import (
	"bufio"
	"bytes"
	"strings"
)

// CgroupContainer is what a cgroup path tells of the container a process
// runs in.
type CgroupContainer struct {
	// Runtime is "docker", "podman", "containerd" or "cri-o", or "" where
	// the path has an id but not which runtime made it.
	Runtime string
	// ID is the container id: 64 lower-case hex digits.
	ID string
	// PodUID is the UID of the Kubernetes pod, where the path has one.
	PodUID string
}

// ParseCgroupPath finds the container id in a cgroup path, in the forms
// that runtimes give with the cgroupfs and systemd drivers, cgroup v1 and
// v2:
//
//	/docker/<id>                                      Docker, cgroupfs
//	/system.slice/docker-<id>.scope                   Docker, systemd
//	/machine.slice/libpod-<id>.scope[/container]      Podman
//	/libpod_parent/libpod-<id>                        Podman, cgroupfs
//	/kubepods/burstable/pod<uid>/<id>                 CRI, cgroupfs
//	/kubepods.slice/…/kubepods-…-pod<uid>.slice/cri-containerd-<id>.scope
//	/kubepods.slice/…/crio-<id>.scope                 CRI-O
//	/default/<id>                                     containerd (ctr)
//
// The innermost id wins (Docker in Docker). Runtime monitors (conmon's
// libpod-conmon-<id> and crio-conmon-<id>) are not containers. It reports
// false for a path with no container id.
func ParseCgroupPath(path string) (CgroupContainer, bool) {
	var c CgroupContainer
	segs := strings.Split(path, "/")
	for _, seg := range segs {
		if uid, ok := podUID(seg); ok {
			c.PodUID = uid
		}
	}
	for i := len(segs) - 1; i >= 0; i-- {
		seg := strings.TrimSuffix(segs[i], ".scope")
		runtime, id := "", seg
		switch {
		case strings.HasPrefix(seg, "libpod-conmon-"), strings.HasPrefix(seg, "crio-conmon-"):
			// The monitor of a container, outside of it: no container.
			return CgroupContainer{}, false
		case strings.HasPrefix(seg, "docker-"):
			runtime, id = "docker", seg[len("docker-"):]
		case strings.HasPrefix(seg, "libpod-"):
			runtime, id = "podman", seg[len("libpod-"):]
		case strings.HasPrefix(seg, "cri-containerd-"):
			runtime, id = "containerd", seg[len("cri-containerd-"):]
		case strings.HasPrefix(seg, "crio-"):
			runtime, id = "cri-o", seg[len("crio-"):]
		}
		if !isContainerID(id) {
			continue
		}
		if runtime == "" && i > 0 {
			switch parent := segs[i-1]; {
			case parent == "docker":
				runtime = "docker"
			case parent == "libpod_parent" || strings.HasPrefix(parent, "libpod-"):
				runtime = "podman"
			}
		}
		c.Runtime, c.ID = runtime, id
		return c, true
	}
	return CgroupContainer{}, false
}

// ParseProcCgroup finds the container in the text of /proc/PID/cgroup:
// lines of hierarchy-id:controllers:path, one on cgroup v2, one per
// hierarchy on v1. It returns the first path with a container id, or
// false and the first path that is not the root, for the log.
func ParseProcCgroup(b []byte) (c CgroupContainer, path string, ok bool) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		_, rest, found := strings.Cut(sc.Text(), ":")
		if !found {
			continue
		}
		_, p, found := strings.Cut(rest, ":")
		if !found {
			continue
		}
		if c, ok := ParseCgroupPath(p); ok {
			return c, p, true
		}
		if path == "" && p != "/" {
			path = p
		}
	}
	return CgroupContainer{}, path, false
}

// podUID reads the pod UID in a kubepods segment: pod<uid> (cgroupfs) or
// kubepods-<qos>-pod<uid with _ for ->.slice (systemd).
func podUID(seg string) (string, bool) {
	seg = strings.TrimSuffix(seg, ".slice")
	i := strings.LastIndex(seg, "pod")
	if i < 0 || (i > 0 && seg[i-1] != '-') {
		return "", false
	}
	uid := strings.ReplaceAll(seg[i+len("pod"):], "_", "-")
	if !isUUID(uid) {
		return "", false
	}
	return uid, true
}

func isContainerID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isHex(s[i]) {
			return false
		}
	}
	return true
}

func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch i {
		case 8, 13, 18, 23:
			if s[i] != '-' {
				return false
			}
		default:
			if !isHex(s[i]) {
				return false
			}
		}
	}
	return true
}

func isHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' }
