package enrich

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseCgroupPath(t *testing.T) {
	const uid = "6c1f8b2e-4a5d-4e3f-9b2a-1c0d2e3f4a5b"
	uidU := strings.ReplaceAll(uid, "-", "_")
	tests := []struct {
		path string
		want CgroupContainer
		ok   bool
	}{
		{"/docker/" + cidA, CgroupContainer{Runtime: "docker", ID: cidA}, true},
		{"/system.slice/docker-" + cidA + ".scope", CgroupContainer{Runtime: "docker", ID: cidA}, true},
		{"/machine.slice/libpod-" + cidA + ".scope", CgroupContainer{Runtime: "podman", ID: cidA}, true},
		{"/machine.slice/libpod-" + cidA + ".scope/container", CgroupContainer{Runtime: "podman", ID: cidA}, true},
		{"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + cidA + ".scope", CgroupContainer{Runtime: "podman", ID: cidA}, true},
		{"/libpod_parent/libpod-" + cidA, CgroupContainer{Runtime: "podman", ID: cidA}, true},
		{"/machine.slice/libpod-conmon-" + cidA + ".scope", CgroupContainer{}, false},
		{"/kubepods/burstable/pod" + uid + "/" + cidA, CgroupContainer{ID: cidA, PodUID: uid}, true},
		{"/kubepods/pod" + uid + "/" + cidA, CgroupContainer{ID: cidA, PodUID: uid}, true},
		{"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/cri-containerd-" + cidA + ".scope",
			CgroupContainer{Runtime: "containerd", ID: cidA, PodUID: uid}, true},
		{"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/crio-" + cidA + ".scope",
			CgroupContainer{Runtime: "cri-o", ID: cidA, PodUID: uid}, true},
		{"/kubepods.slice/kubepods-pod" + uidU + ".slice/crio-conmon-" + cidA + ".scope", CgroupContainer{}, false},
		{"/default/" + cidA, CgroupContainer{ID: cidA}, true},
		{"/docker/" + cidA + "/docker/" + cidB, CgroupContainer{Runtime: "docker", ID: cidB}, true},
		{"/", CgroupContainer{}, false},
		{"", CgroupContainer{}, false},
		{"/user.slice/user-0.slice/session-3.scope", CgroupContainer{}, false},
		{"/docker/" + cidA[:63], CgroupContainer{}, false},
		{"/docker/" + strings.ToUpper(cidA), CgroupContainer{}, false},
		{"/process_api/03b4ae549469ef5b687da6c78ca01e1f", CgroupContainer{}, false},
	}
	for _, tt := range tests {
		got, ok := ParseCgroupPath(tt.path)
		if got != tt.want || ok != tt.ok {
			t.Errorf("ParseCgroupPath(%q) = %+v, %v, want %+v, %v", tt.path, got, ok, tt.want, tt.ok)
		}
	}
}

func TestParseProcCgroup(t *testing.T) {
	tests := []struct {
		name     string
		text     string
		wantID   string
		wantPath string
	}{
		{"v2", "0::/system.slice/docker-" + cidA + ".scope\n", cidA, "/system.slice/docker-" + cidA + ".scope"},
		{"v1", "12:pids:/docker/" + cidA + "\n11:memory:/docker/" + cidA + "\n0::/\n", cidA, "/docker/" + cidA},
		{"v1 partial", "4:memory:/process_api/x\n3:cpu:/docker/" + cidA + "\n", cidA, "/docker/" + cidA},
		{"host", "0::/\n", "", ""},
		{"unknown", "4:memory:/process_api/03b4\n0::/\n", "", "/process_api/03b4"},
		{"garbage", "no colons here\n::\n", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, path, ok := ParseProcCgroup([]byte(tt.text))
			if c.ID != tt.wantID || path != tt.wantPath || ok != (tt.wantID != "") {
				t.Fatalf("ParseProcCgroup(%q) = %+v, %q, %v, want id %q, path %q", tt.text, c, path, ok, tt.wantID, tt.wantPath)
			}
		})
	}
}

func FuzzParseCgroupPath(f *testing.F) {
	f.Add("/docker/" + cidA)
	f.Add("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod6c1f8b2e_4a5d_4e3f_9b2a_1c0d2e3f4a5b.slice/cri-containerd-" + cidA + ".scope")
	f.Add("/machine.slice/libpod-conmon-" + cidA + ".scope")
	f.Add("pod")
	f.Fuzz(func(t *testing.T, path string) {
		c, ok := ParseCgroupPath(path)
		if !ok {
			if c != (CgroupContainer{}) {
				t.Fatalf("ParseCgroupPath(%q) = %+v, false, want the zero value", path, c)
			}
			return
		}
		if !isContainerID(c.ID) || !strings.Contains(path, c.ID) {
			t.Fatalf("ParseCgroupPath(%q).ID = %q: not a container id of the path", path, c.ID)
		}
		if c.PodUID != "" && !isUUID(c.PodUID) {
			t.Fatalf("ParseCgroupPath(%q).PodUID = %q: not a UUID", path, c.PodUID)
		}
	})
}

func TestParseCIDRs(t *testing.T) {
	text := `# what is not ours
203.0.113.10        payments   load balancer   # the VIP
198.51.100.0/24	corp network
2001:db8:5::/48 db subnet

10.1.2.3/8 typo
300.1.1.1 bad
203.0.113.0/24
198.51.100.0/24 corp (renamed)
::ffff:192.0.2.0/120 mapped
`
	cidrs, errs := ParseCIDRs(strings.NewReader(text))
	want := []CIDR{
		{netip.MustParsePrefix("203.0.113.10/32"), "payments load balancer"},
		{netip.MustParsePrefix("198.51.100.0/24"), "corp (renamed)"},
		{netip.MustParsePrefix("2001:db8:5::/48"), "db subnet"},
	}
	if len(cidrs) != len(want) {
		t.Fatalf("ParseCIDRs = %v, want %v", cidrs, want)
	}
	for i := range want {
		if cidrs[i] != want[i] {
			t.Errorf("ParseCIDRs[%d] = %v, want %v", i, cidrs[i], want[i])
		}
	}
	wantErrs := []string{"line 6", "line 7", "line 8", "line 10"}
	if len(errs) != len(wantErrs) {
		t.Fatalf("ParseCIDRs errors = %v, want %d errors", errs, len(wantErrs))
	}
	for i, w := range wantErrs {
		if !strings.HasPrefix(errs[i].Error(), w+":") {
			t.Errorf("ParseCIDRs error %d = %q, want it to start with %q", i, errs[i], w)
		}
	}
}

func TestCIDRLookup(t *testing.T) {
	table := newCIDRTable([]CIDR{
		{netip.MustParsePrefix("0.0.0.0/0"), "anywhere"},
		{netip.MustParsePrefix("203.0.113.0/24"), "corp"},
		{netip.MustParsePrefix("203.0.113.128/25"), "lab"},
		{netip.MustParsePrefix("2001:db8::/32"), "v6 corp"},
	})
	tests := []struct{ addr, want string }{
		{"203.0.113.1", "corp"},
		{"203.0.113.200", "lab"},
		{"198.51.100.1", "anywhere"},
		{"2001:db8:1::1", "v6 corp"},
		{"2001:db9::1", ""},
	}
	for _, tt := range tests {
		c, _ := table.lookup(netip.MustParseAddr(tt.addr))
		if c.Name != tt.want {
			t.Errorf("lookup(%s) = %q, want %q", tt.addr, c.Name, tt.want)
		}
	}
}

func FuzzParseCIDRs(f *testing.F) {
	f.Add("203.0.113.10 lb\n198.51.100.0/24 corp # c\n")
	f.Add("2001:db8::/32\tv6\n")
	f.Add("::ffff:1.2.3.4 x")
	f.Fuzz(func(t *testing.T, text string) {
		cidrs, _ := ParseCIDRs(strings.NewReader(text))
		table := newCIDRTable(cidrs)
		for _, c := range cidrs {
			if c.Name == "" || c.Prefix.Masked() != c.Prefix {
				t.Fatalf("ParseCIDRs(%q) gave %v: empty name or host bits", text, c)
			}
			// Each range covers its own first address, and a longer one
			// covering it would have been found instead.
			got, ok := table.lookup(c.Prefix.Addr())
			if !ok || got.Prefix.Bits() < c.Prefix.Bits() {
				t.Fatalf("lookup(%s) = %v, %v, want %v or a longer one", c.Prefix.Addr(), got, ok, c)
			}
		}
	})
}
