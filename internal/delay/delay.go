// Package delay delays a sandbox host's packets to one peer by a fixed time
// in user space: what `tc qdisc add dev eth0 root netem delay 20ms` does in
// the host's namespace, for kernels built without netem (and without fq's
// or ETF's time-based transmit), where tests still need a path with a
// known round trip.
//
// Start routes the peer's address through a TUN device in the host's
// namespace. A goroutine reads each packet the host sends the peer from
// the device, and a second one writes it out of eth0 with an AF_PACKET
// socket, addressed to the peer's MAC, once the delay has passed since it
// was read. Packets keep their order. Only the host's direction is
// delayed; the peer's packets reach the host directly, so a round trip
// between the two takes the delay once.
//
// The TUN device offers no checksum or segmentation offload, so the stack
// hands it complete packets of at most the device's MTU (eth0's), which
// go out of eth0 unchanged. Stats says how late the writes were: the
// delay a packet saw is the set delay plus that lateness plus the
// kernel's time to hand it to the reader, which is microseconds.
package delay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flowmap/flowmap/sandbox"
)

// ifName is the TUN device's name in the host's namespace.
const ifName = "delay0"

// Stats describes the packets a Path forwarded.
type Stats struct {
	Packets    uint64        // written out of eth0
	Errors     uint64        // failed writes
	Late       time.Duration // summed lateness: write end minus read time plus delay
	MaxLate    time.Duration // the largest lateness of one packet
	MeanLate   time.Duration // Late over Packets
	MedianLate time.Duration // of the first maxLates packets
}

// maxLates bounds the packets whose lateness is kept for its median.
const maxLates = 1 << 16

// Path delays one host's packets to one peer. Close removes it.
type Path struct {
	delay time.Duration
	tun   *os.File
	pkt   int // AF_PACKET socket in the host's namespace
	to    unix.SockaddrLinklayer
	to6   unix.SockaddrLinklayer
	queue chan packet
	done  chan struct{}

	mu    sync.Mutex
	stats Stats
	lates []time.Duration
}

type packet struct {
	data []byte
	read time.Time
}

// Start delays every packet h sends to peer (an IPv4 or IPv6 address on
// h's subnet, whose eth0 has the MAC peerMAC) by d, until Close.
func Start(h *sandbox.Host, peer netip.Addr, peerMAC net.HardwareAddr, d time.Duration) (*Path, error) {
	p := &Path{delay: d, pkt: -1, queue: make(chan packet, 4096), done: make(chan struct{})}
	if err := h.Do(func() error { return p.setup(h, peer, peerMAC) }); err != nil {
		p.closeFDs()
		return nil, fmt.Errorf("delay %s to %s: %w", h.Name, peer, err)
	}
	go p.read()
	go p.write()
	return p, nil
}

// setup runs in h's namespace.
func (p *Path) setup(h *sandbox.Host, peer netip.Addr, peerMAC net.HardwareAddr) error {
	eth0, err := net.InterfaceByName("eth0")
	if err != nil {
		return err
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(ifName)
	if err != nil {
		unix.Close(fd)
		return err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return fmt.Errorf("TUNSETIFF: %w", err)
	}
	// Non-blocking, so reads wait in the runtime's poller and Close ends them.
	p.tun = os.NewFile(uintptr(fd), "/dev/net/tun")

	p.pkt, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("AF_PACKET socket: %w", err)
	}
	var mac [8]byte
	copy(mac[:], peerMAC)
	p.to = unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: eth0.Index, Halen: uint8(len(peerMAC)), Addr: mac}
	p.to6 = p.to
	p.to6.Protocol = htons(unix.ETH_P_IPV6)

	link, err := netlink.LinkByName(ifName)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetMTU(link, eth0.MTU); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return err
	}
	// Replies come in through eth0 while the route back is the TUN
	// device: a strict reverse-path filter would drop them.
	for _, dev := range []string{"all", "eth0"} {
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+dev+"/rp_filter", []byte("0"), 0); err != nil {
			return err
		}
	}
	route := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: &net.IPNet{IP: peer.AsSlice(), Mask: net.CIDRMask(peer.BitLen(), peer.BitLen())}}
	if peer.Is4() {
		route.Src = h.Addr.AsSlice()
	} else {
		route.Src = h.Addr6.AsSlice()
	}
	if err := netlink.RouteAdd(route); err != nil {
		return fmt.Errorf("route %s through %s: %w", peer, ifName, err)
	}
	return nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// read queues every packet the TUN device hands over, stamped with the
// time it was read, until the device is closed.
func (p *Path) read() {
	defer close(p.queue)
	for {
		buf := make([]byte, 65536)
		n, err := p.tun.Read(buf)
		if err != nil {
			return
		}
		p.queue <- packet{data: buf[:n], read: time.Now()}
	}
}

// write sends each queued packet out of eth0 once the delay has passed.
func (p *Path) write() {
	defer close(p.done)
	for pk := range p.queue {
		due := pk.read.Add(p.delay)
		time.Sleep(time.Until(due))
		to := &p.to
		if len(pk.data) > 0 && pk.data[0]>>4 == 6 {
			to = &p.to6
		}
		err := unix.Sendto(p.pkt, pk.data, 0, to)
		late := time.Since(due)
		p.mu.Lock()
		if err != nil {
			p.stats.Errors++
		} else {
			p.stats.Packets++
			p.stats.Late += late
			p.stats.MaxLate = max(p.stats.MaxLate, late)
			if len(p.lates) < maxLates {
				p.lates = append(p.lates, late)
			}
		}
		p.mu.Unlock()
	}
}

// Stats returns what p forwarded so far.
func (p *Path) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	if s.Packets > 0 {
		s.MeanLate = s.Late / time.Duration(s.Packets)
		l := slices.Sorted(slices.Values(p.lates))
		s.MedianLate = l[len(l)/2]
	}
	return s
}

// Close removes the TUN device, and with it the route, after writing the
// packets still queued; packets to the peer then take eth0 again.
func (p *Path) Close() error {
	err := p.tun.Close()
	<-p.done
	return errors.Join(err, p.closeFDs())
}

func (p *Path) closeFDs() error {
	var err error
	if p.tun != nil {
		p.tun.Close()
	}
	if p.pkt >= 0 {
		err = unix.Close(p.pkt)
		p.pkt = -1
	}
	return err
}
