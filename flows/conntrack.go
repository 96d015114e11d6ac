package flows

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/flowmap/flowmap/model"
)

// conntrack's netlink attributes that package nl does not name
// (linux/netfilter/nfnetlink_conntrack.h).
const (
	ctaTupleProto  = 2 // CTA_TUPLE_PROTO
	ctaIPv6Src     = 3 // CTA_IP_V6_SRC
	ctaIPv6Dst     = 4 // CTA_IP_V6_DST
	ctaProtoNum    = 1 // CTA_PROTO_NUM
	ctaProtoSrc    = 2 // CTA_PROTO_SRC_PORT
	ctaProtoDst    = 3 // CTA_PROTO_DST_PORT
	ctaIPv4Src     = 1 // CTA_IP_V4_SRC
	ctaIPv4Dst     = 2 // CTA_IP_V4_DST
	ctMsgNew       = unix.NFNL_SUBSYS_CTNETLINK<<8 | nl.IPCTNL_MSG_CT_NEW
	ctMsgGet       = unix.NFNL_SUBSYS_CTNETLINK<<8 | nl.IPCTNL_MSG_CT_GET
	ctBatch        = 128     // requests sent at once
	ctRecvBuf      = 4 << 20 // the socket's receive buffer: a reply takes a 4 KiB skb or more
	ctRequestBytes = 16 + 4 + 4 + 4 + 2*(4+16) + 4 + 3*8
)

// ctLookup looks conntrack up for the connections of keys: an
// IPCTNL_MSG_CT_GET of each tuple, which conntrack finds whether it is the
// connection's original tuple or its reply tuple, instead of a dump of the
// whole table at each drain (a SYN flood fills the table to
// nf_conntrack_max, and a dump copied it all, about 0.5 KB an entry).
// Requests go ctBatch to a send; the kernel answers each within the send,
// so what the receive buffer did not hold (ENOBUFS) is asked again. fn
// gets each connection found, in a value reused for the next. It returns
// the connections found.
func ctLookup(keys []bpfFlowKey, fn func(*netlink.ConntrackFlow)) (int, error) {
	if len(keys) == 0 || conntrackEmpty() {
		return 0, nil
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return 0, fmt.Errorf("open conntrack netlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("bind conntrack netlink socket: %w", err)
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, ctRecvBuf) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, ctRecvBuf)
	}
	req := make([]byte, 0, ctBatch*ctRequestBytes)
	rbuf := make([]byte, 64<<10)
	var flow netlink.ConntrackFlow
	found := 0
	answered := make([]bool, ctBatch)
	for start := 0; start < len(keys); start += ctBatch {
		batch := keys[start:min(start+ctBatch, len(keys))]
		clear(answered)
		for try := 0; ; try++ {
			req = req[:0]
			for i := range batch {
				if !answered[i] {
					req = appendCTGet(req, &batch[i], uint32(start+i+1))
				}
			}
			if len(req) == 0 {
				break
			}
			if try == 3 {
				return found, fmt.Errorf("conntrack lookup: replies lost 3 times (receive buffer full)")
			}
			if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
				return found, fmt.Errorf("send conntrack lookup: %w", err)
			}
			// The kernel answered within the send: read what is queued.
			for {
				n, _, err := unix.Recvfrom(fd, rbuf, unix.MSG_DONTWAIT)
				if errors.Is(err, unix.EAGAIN) {
					break
				}
				if errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EINTR) {
					continue // some replies lost: asked again below
				}
				if err != nil {
					return found, fmt.Errorf("read conntrack lookup: %w", err)
				}
				for b := rbuf[:n]; len(b) >= unix.NLMSG_HDRLEN; {
					l := int(binary.NativeEndian.Uint32(b))
					if l < unix.NLMSG_HDRLEN || l > len(b) {
						break
					}
					typ := binary.NativeEndian.Uint16(b[4:])
					seq := int(binary.NativeEndian.Uint32(b[8:]))
					if i := seq - 1 - start; i >= 0 && i < len(batch) {
						answered[i] = true
						if typ == ctMsgNew && parseCT(&flow, b[unix.NLMSG_HDRLEN:l]) {
							found++
							fn(&flow)
						}
					}
					b = b[min(nlAlign(l), len(b)):]
				}
			}
		}
	}
	return found, nil
}

func nlAlign(n int) int { return (n + 3) &^ 3 }

// appendCTGet appends a request for the connection that has k as its
// original or reply tuple.
func appendCTGet(b []byte, k *bpfFlowKey, seq uint32) []byte {
	v4 := isV4(k.Saddr) && isV4(k.Daddr)
	start := len(b)
	b = binary.NativeEndian.AppendUint32(b, 0) // length, below
	b = binary.NativeEndian.AppendUint16(b, ctMsgGet)
	b = binary.NativeEndian.AppendUint16(b, unix.NLM_F_REQUEST)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0)
	family := byte(unix.AF_INET6)
	if v4 {
		family = unix.AF_INET
	}
	b = append(b, family, nl.NFNETLINK_V0, 0, 0)
	orig := nested(&b, nl.CTA_TUPLE_ORIG)
	ip := nested(&b, nl.CTA_TUPLE_IP)
	if v4 {
		b = attr(b, ctaIPv4Src, k.Saddr[12:])
		b = attr(b, ctaIPv4Dst, k.Daddr[12:])
	} else {
		b = attr(b, ctaIPv6Src, k.Saddr[:])
		b = attr(b, ctaIPv6Dst, k.Daddr[:])
	}
	ip()
	proto := nested(&b, ctaTupleProto)
	b = attr(b, ctaProtoNum, []byte{k.Proto})
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], k.Sport)
	b = attr(b, ctaProtoSrc, port[:])
	binary.BigEndian.PutUint16(port[:], k.Dport)
	b = attr(b, ctaProtoDst, port[:])
	proto()
	orig()
	binary.NativeEndian.PutUint32(b[start:], uint32(len(b)-start))
	return b
}

func isV4(a [16]byte) bool { return net.IP(a[:]).To4() != nil }

// attr appends a netlink attribute, padded to 4 bytes.
func attr(b []byte, typ uint16, v []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(4+len(v)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, v...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// nested starts a nested attribute at the end of *b; the function it
// returns ends it.
func nested(b *[]byte, typ uint16) func() {
	start := len(*b)
	*b = binary.NativeEndian.AppendUint16(*b, 0)
	*b = binary.NativeEndian.AppendUint16(*b, typ|nl.NLA_F_NESTED)
	return func() { binary.NativeEndian.PutUint16((*b)[start:], uint16(len(*b)-start)) }
}

// attrs calls fn with each attribute of b, its type without flags.
func attrs(b []byte, fn func(typ uint16, v []byte)) {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b))
		if l < 4 || l > len(b) {
			return
		}
		fn(binary.NativeEndian.Uint16(b[2:])&nl.NLA_TYPE_MASK, b[4:l])
		b = b[min(nlAlign(l), len(b)):]
	}
}

// parseCT reads a conntrack message (after its netlink header) into f's
// tuples, reusing their address slices. It reports whether both tuples
// were there.
func parseCT(f *netlink.ConntrackFlow, msg []byte) bool {
	if len(msg) < 4 {
		return false
	}
	f.FamilyType = msg[0]
	seen := 0
	attrs(msg[4:], func(typ uint16, v []byte) {
		var t *netlink.IPTuple
		switch typ {
		case nl.CTA_TUPLE_ORIG:
			t = &f.Forward
		case nl.CTA_TUPLE_REPLY:
			t = &f.Reverse
		default:
			return
		}
		seen++
		parseTuple(t, v)
	})
	return seen == 2
}

func parseTuple(t *netlink.IPTuple, b []byte) {
	attrs(b, func(typ uint16, v []byte) {
		switch typ {
		case nl.CTA_TUPLE_IP:
			attrs(v, func(typ uint16, v []byte) {
				switch typ {
				case ctaIPv4Src, ctaIPv6Src:
					t.SrcIP = append(t.SrcIP[:0], v...)
				case ctaIPv4Dst, ctaIPv6Dst:
					t.DstIP = append(t.DstIP[:0], v...)
				}
			})
		case ctaTupleProto:
			attrs(v, func(typ uint16, v []byte) {
				switch {
				case typ == ctaProtoNum && len(v) >= 1:
					t.Protocol = v[0]
				case typ == ctaProtoSrc && len(v) >= 2:
					t.SrcPort = binary.BigEndian.Uint16(v)
				case typ == ctaProtoDst && len(v) >= 2:
					t.DstPort = binary.BigEndian.Uint16(v)
				}
			})
		}
	})
}

// conntrackCount is the file that counts the connections conntrack tracks
// in the agent's network namespace.
const conntrackCount = "/proc/sys/net/netfilter/nf_conntrack_count"

// conntrackEmpty reports whether conntrack tracks no connection: then
// nothing is NATed and no lookup is needed (a host without NAT rules, or
// where conntrack is not loaded, is spared a request per connection).
func conntrackEmpty() bool {
	b, err := os.ReadFile(conntrackCount)
	return err == nil && strings.TrimSpace(string(b)) == "0"
}

// ctCandidates returns the tuples to look conntrack up for: each direction
// of each TCP or UDP connection drained, appended to keys[:0]. A half-open
// connection, whose client sent SYNs and never an ACK (a SYN flood's), is
// skipped: its NAT join, if any, is not worth a lookup per spoofed source.
// It returns how many it skipped.
func ctCandidates(keys []bpfFlowKey, dirs *flowTable) ([]bpfFlowKey, int) {
	keys = keys[:0]
	skipped := 0
	dirs.each(func(k bpfFlowKey, d, rd *direction) {
		if k.Proto != unix.IPPROTO_TCP && k.Proto != unix.IPPROTO_UDP || k.Vlan != 0 {
			return
		}
		if k.Proto == unix.IPPROTO_TCP && (d != nil && halfOpen(d) || rd != nil && halfOpen(rd)) {
			skipped++
			return
		}
		// Ask for each tuple a direction was counted under: conntrack
		// knows a connection by its original and its reply tuple, and a
		// direction counted after DNAT (the host's own request to a
		// Service, at the egress it leaves by) is under neither, while
		// its reverse, the backend's answer, is the reply tuple.
		if d != nil {
			keys = append(keys, k)
		}
		if rd != nil {
			keys = append(keys, reverse(k))
		}
	})
	return keys, skipped
}

// halfOpen reports whether d is a client's that sent a SYN and no ACK.
func halfOpen(d *direction) bool {
	const ack = 0x10
	return d.TCPFlags&model.FlagSYNOnly != 0 && d.TCPFlags&ack == 0
}
