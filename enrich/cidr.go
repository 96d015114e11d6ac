package enrich

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"
)

// CIDR names a range of addresses that no source owns: a load balancer's
// VIP, a database subnet, "corp network".
type CIDR struct {
	Prefix netip.Prefix
	Name   string
}

// ParseCIDRs reads a CIDR file: one range a line, its CIDR (or a single
// address) then its name, which may have spaces; blank lines and text from
// a # on are ignored:
//
//	# name the addresses that are not ours
//	203.0.113.10       payments load balancer
//	198.51.100.0/24    corp network
//	2001:db8:5::/48    db subnet
//
// A line it cannot read is skipped and reported in errs, with its number;
// the lines before and after it are kept. A later line for the same range
// replaces an earlier one.
func ParseCIDRs(r io.Reader) (cidrs []CIDR, errs []error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	seen := make(map[netip.Prefix]int)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		field, name, _ := strings.Cut(line, " ")
		if i := strings.IndexByte(field, '\t'); i >= 0 {
			field, name = field[:i], field[i+1:]+" "+name
		}
		name = strings.Join(strings.Fields(name), " ")
		if name == "" {
			errs = append(errs, fmt.Errorf("line %d: %q has no name", n, line))
			continue
		}
		p, err := parsePrefix(field)
		if err != nil {
			errs = append(errs, fmt.Errorf("line %d: %w", n, err))
			continue
		}
		if i, ok := seen[p]; ok {
			cidrs[i].Name = name
			continue
		}
		seen[p] = len(cidrs)
		cidrs = append(cidrs, CIDR{Prefix: p, Name: name})
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, fmt.Errorf("read: %w", err))
	}
	return cidrs, errs
}

// parsePrefix reads a CIDR or an address, which is its own /32 or /128.
// A prefix with host bits set (10.1.2.3/8) is refused: it is likely a typo.
func parsePrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("parse address %q: %w", s, err)
		}
		if a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("parse address %q: zones are not allowed", s)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("parse prefix %q: %w", s, err)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("parse prefix %q: host bits set (did you mean %s?)", s, p.Masked())
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("parse prefix %q: an IPv4-mapped prefix; write it as IPv4", s)
	}
	return p, nil
}

// cidrTable finds the longest CIDR that covers an address without
// allocating: one map lookup per prefix length in use.
type cidrTable struct {
	entries map[netip.Prefix]CIDR
	bits4   []int // prefix lengths in use for IPv4, longest first
	bits6   []int
}

func newCIDRTable(cidrs []CIDR) *cidrTable {
	t := &cidrTable{entries: make(map[netip.Prefix]CIDR, len(cidrs))}
	for _, c := range cidrs {
		t.entries[c.Prefix] = c
		bits := &t.bits6
		if c.Prefix.Addr().Is4() {
			bits = &t.bits4
		}
		if !slices.Contains(*bits, c.Prefix.Bits()) {
			*bits = append(*bits, c.Prefix.Bits())
		}
	}
	slices.SortFunc(t.bits4, func(a, b int) int { return b - a })
	slices.SortFunc(t.bits6, func(a, b int) int { return b - a })
	return t
}

func (t *cidrTable) lookup(a netip.Addr) (CIDR, bool) {
	bits := t.bits6
	if a.Is4() {
		bits = t.bits4
	}
	for _, b := range bits {
		p, err := a.Prefix(b)
		if err != nil {
			continue
		}
		if c, ok := t.entries[p]; ok {
			return c, true
		}
	}
	return CIDR{}, false
}

// cidrSource reads the CIDR file, and again when it changes.
type cidrSource struct {
	path   string
	resync time.Duration
}

func (c *cidrSource) run(ctx context.Context, s *sourceState) error {
	// The file is small: polling it is simpler than inotify and survives
	// the file being replaced by rename, as editors and ConfigMaps do.
	poll := min(c.resync, 5*time.Second)
	var last []byte
	loaded := false
	for {
		b, err := os.ReadFile(c.path)
		switch {
		case err != nil:
			s.fail("read", fmt.Errorf("read cidr file: %w", err))
		case !loaded || !bytes.Equal(b, last):
			cidrs, errs := ParseCIDRs(bytes.NewReader(b))
			for _, err := range errs {
				s.bad("parse", fmt.Errorf("cidr file %s: %w", c.path, err))
			}
			s.inv.setCIDRs(newCIDRTable(cidrs))
			s.synced(len(cidrs))
			last, loaded = b, true
		default:
			s.synced(len(s.inv.cidrs.Load().entries))
		}
		if !sleep(ctx, poll) {
			return nil
		}
	}
}

// setCIDRs replaces the CIDR table Resolve names external addresses from.
func (inv *Inventory) setCIDRs(t *cidrTable) {
	inv.cidrs.Store(t)
	inv.gen.Add(1)
}
