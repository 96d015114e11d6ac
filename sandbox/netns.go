package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// netnsDir is where named network namespaces are bind mounted, as by
// `ip netns add`, so `ip netns exec` and `ip netns list` see ours.
const netnsDir = "/run/netns"

// sysctl is a setting under /proc/sys.
type sysctl struct{ key, value string }

// writeSysctls writes each setting in the network namespace of the calling
// thread: /proc/sys/net follows the thread, not the process.
func writeSysctls(sysctls []sysctl) error {
	for _, s := range sysctls {
		if err := os.WriteFile(filepath.Join("/proc/sys", s.key), []byte(s.value), 0o644); err != nil {
			return fmt.Errorf("set sysctl %s=%s: %w", s.key, s.value, err)
		}
	}
	return nil
}

// createNetNS creates a network namespace, applies sysctls in it and bind
// mounts it at netnsDir/name. It fails with an error wrapping os.ErrExist if
// the name is taken.
func createNetNS(name string, sysctls []sysctl) error {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return fmt.Errorf("create netns %s: %w", name, err)
	}
	path := filepath.Join(netnsDir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("create netns %s: %w", name, err)
	}
	f.Close()

	errc := make(chan error, 1)
	go func() {
		// Unshare moves this thread into the new namespace for good. It stays
		// locked so the runtime ends it with this goroutine rather than run
		// other goroutines on it. (netns.NewNamed switches the caller's
		// thread and leaves it switched if the bind mount fails.)
		runtime.LockOSThread()
		errc <- func() error {
			if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
				return os.NewSyscallError("unshare", err)
			}
			if err := writeSysctls(sysctls); err != nil {
				return err
			}
			if err := unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, ""); err != nil {
				return fmt.Errorf("bind mount at %s: %w", path, os.NewSyscallError("mount", err))
			}
			return nil
		}()
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return fmt.Errorf("create netns %s: %w", name, err)
	}
	return nil
}

// deleteNetNS removes the namespace's name. The namespace itself goes when
// the last process, socket or descriptor in it does. A name that does not
// exist is no error.
func deleteNetNS(name string) error {
	path := filepath.Join(netnsDir, name)
	// EINVAL: not a mount point, as after a crash between create and mount.
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
		return fmt.Errorf("delete netns %s: %w", name, os.NewSyscallError("umount", err))
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}
