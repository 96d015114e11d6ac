package flows

import (
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"golang.org/x/sys/unix"

	"github.com/flowmap/flowmap/internal/testenv"
)

func TestMapMemoryAt(t *testing.T) {
	tests := []struct {
		name string
		m    MapMemory
		cpus int
		want uint64
	}{
		{"shared hash", MapMemory{Type: ebpf.Hash, MaxEntries: 100, ValueSize: 56, Bytes: 10_000, CPUs: 2}, 128, 10_000},
		{"same CPUs", MapMemory{Type: ebpf.PerCPUHash, MaxEntries: 100, ValueSize: 56, Bytes: 20_000, CPUs: 2}, 2, 20_000},
		// (100 entries + 1 spare a CPU) × 56 bytes × CPUs.
		{"per-CPU hash", MapMemory{Type: ebpf.PerCPUHash, MaxEntries: 100, ValueSize: 56, Bytes: 20_000, CPUs: 2}, 4,
			20_000 - 102*56*2 + 104*56*4},
		// Values rounded up to 8 bytes, no spares.
		{"per-CPU array", MapMemory{Type: ebpf.PerCPUArray, MaxEntries: 2, ValueSize: 44, Bytes: 1_000, CPUs: 2}, 64,
			1_000 - 2*48*2 + 2*48*64},
		// Full: (element 48 + key 16 + pointer 8 + 64 CPUs × 528) × 10.
		{"per-CPU hash, not preallocated", MapMemory{Type: ebpf.PerCPUHash, MaxEntries: 10, KeySize: 16, ValueSize: 528,
			Flags: unix.BPF_F_NO_PREALLOC, Bytes: 3_000, CPUs: 2}, 64, (48 + 16 + 8 + 64*528) * 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.m.At(tt.cpus); got != tt.want {
				t.Errorf("At(%d) = %d, want %d", tt.cpus, got, tt.want)
			}
		})
	}
}

// TestMapMemoryReported checks that every map's kernel memory is in Stats
// and /metrics, the flow maps' at least their values' size.
func TestMapMemoryReported(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	d := newTestDatapath(t)
	mem := d.Stats().MapMemory
	byName := map[string]MapMemory{}
	for _, m := range mem {
		byName[m.Name] = m
	}
	for _, name := range []string{"flows4_a", "flows4_b", "flows6_a", "flows6_b", "counters", "half_open"} {
		m, ok := byName[name]
		if !ok {
			t.Errorf("Stats().MapMemory lacks map %s", name)
			continue
		}
		// The flow maps are shared: their memory does not grow with the
		// CPUs.
		if strings.HasPrefix(name, "flows") {
			if got := m.At(128); m.PerCPU() || got != m.Bytes {
				t.Errorf("map %s: per CPU %t, %d bytes here, %d at 128 CPUs; want shared, the same", name, m.PerCPU(), m.Bytes, got)
			}
		}
		vals := uint64(m.MaxEntries) * uint64(m.ValueSize)
		if m.PerCPU() {
			vals *= uint64(m.CPUs)
		}
		if m.Bytes < vals {
			t.Errorf("map %s: memory %d bytes, want at least its values' %d", name, m.Bytes, vals)
		}
	}
	var here, at64, at128 uint64
	for _, m := range mem {
		here, at64, at128 = here+m.Bytes, at64+m.At(64), at128+m.At(128)
		t.Logf("%-16s %6.2f MiB here, %6.2f MiB full at 128 CPUs", m.Name, mib(m.Bytes), mib(m.At(128)))
	}
	t.Logf("maps: %.1f MiB at %d CPUs, %.1f MiB at 64, %.1f MiB at 128", mib(here), mem[0].CPUs, mib(at64), mib(at128))
	metrics, err := testutil.CollectAndFormat(NewCollector(d), expfmt.TypeTextPlain, "flowmap_map_memory_bytes")
	if err != nil {
		t.Fatalf("collect: %v", err)
	}
	if got, want := strings.Count(string(metrics), "flowmap_map_memory_bytes{"), len(mem); got != want {
		t.Errorf("/metrics has %d flowmap_map_memory_bytes series, want %d (one a map):\n%s", got, want, metrics)
	}
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }
