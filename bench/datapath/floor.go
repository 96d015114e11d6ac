package main

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

//go:generate go tool bpf2go -tags linux -target bpfel bpf ../../bpf/floor.c -- -I/usr/include/x86_64-linux-gnu -Wall -Werror

// loadFloor loads the floor programs, which only bump a per-CPU counter.
func loadFloor() (*bpfObjects, error) {
	var objs bpfObjects
	if err := loadBpfObjects(&objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load floor programs: %+v", ve)
		}
		return nil, fmt.Errorf("load floor programs: %w", err)
	}
	return &objs, nil
}

// links is a set of attachments, closed in reverse order.
type links []link.Link

func (ls *links) add(l link.Link) { *ls = append(*ls, l) }

func (ls *links) Close() error {
	var errs []error
	for i := len(*ls) - 1; i >= 0; i-- {
		errs = append(errs, (*ls)[i].Close())
	}
	*ls = nil
	return errors.Join(errs...)
}

// attachTCX attaches prog to the ingress or egress of ifindex by TCX.
func (ls *links) attachTCX(prog *ebpf.Program, ifindex int, ingress bool) error {
	at := ebpf.AttachTCXEgress
	if ingress {
		at = ebpf.AttachTCXIngress
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: at})
	if err != nil {
		return fmt.Errorf("attach tcx %s to ifindex %d: %w", at, ifindex, err)
	}
	ls.add(l)
	return nil
}

// attachXDP attaches prog to the XDP hook of ifindex in the given mode.
func (ls *links) attachXDP(prog *ebpf.Program, ifindex int, native bool) error {
	flags := link.XDPGenericMode
	if native {
		flags = link.XDPDriverMode
	}
	l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: flags})
	if err != nil {
		return fmt.Errorf("attach xdp (native %t) to ifindex %d: %w", native, ifindex, err)
	}
	ls.add(l)
	return nil
}
