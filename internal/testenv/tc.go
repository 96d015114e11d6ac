package testenv

import (
	"net"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TCXPrograms counts the TCX programs on an interface's ingress and
// egress.
func TCXPrograms(t testing.TB, ifindex int) int {
	t.Helper()
	n := 0
	for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: at})
		if err != nil {
			t.Fatalf("query %s programs on ifindex %d: %v", at, ifindex, err)
		}
		n += len(res.Programs)
	}
	return n
}

// ClsactFilters counts the filters on an interface's clsact ingress and
// egress (none where it has no clsact qdisc).
func ClsactFilters(t testing.TB, ifindex int) int {
	t.Helper()
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		t.Fatalf("link %d: %v", ifindex, err)
	}
	n := 0
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		fs, _ := netlink.FilterList(l, parent)
		n += len(fs)
	}
	return n
}

// HasClsact reports whether an interface has a clsact qdisc.
func HasClsact(t testing.TB, ifindex int) bool {
	t.Helper()
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		t.Fatalf("link %d: %v", ifindex, err)
	}
	qs, err := netlink.QdiscList(l)
	if err != nil {
		t.Fatalf("qdiscs of %d: %v", ifindex, err)
	}
	for _, q := range qs {
		if q.Type() == "clsact" {
			return true
		}
	}
	return false
}

// TCPRetransmitted returns the bytes a TCP connection retransmitted
// (TCP_INFO's tcpi_bytes_retrans): a test that checks counted bytes
// against what it sent allows for them, as a segment dropped on a busy
// machine is sent, and counted, twice. It returns 0 if the kernel does not
// say.
func TCPRetransmitted(c *net.TCPConn) uint64 {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	var info *unix.TCPInfo
	raw.Control(func(fd uintptr) { info, _ = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) })
	if info == nil {
		return 0
	}
	return info.Bytes_retrans
}

// TCPRetransmits returns the segments a TCP connection retransmitted
// (TCP_INFO's tcpi_total_retrans), or 0 if the kernel does not say.
func TCPRetransmits(c *net.TCPConn) uint64 {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	var info *unix.TCPInfo
	raw.Control(func(fd uintptr) { info, _ = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) })
	if info == nil {
		return 0
	}
	return uint64(info.Total_retrans)
}
