package host

import "golang.org/x/sys/unix"

// HasCap reports whether the calling thread has capability c (one of
// unix.CAP_*) in its effective set. It returns true where the kernel does
// not say, so that a caller's own call fails with the kernel's error
// instead.
func HasCap(c int) bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return true
	}
	return data[c/32].Effective&(1<<(uint(c)%32)) != 0
}
