package flows

import (
	"fmt"
	"reflect"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// MapMemory is the kernel memory of one of the datapath's maps, as the
// kernel charges it (fdinfo's memlock), with what it takes to tell what the
// map would take on a machine with more CPUs.
type MapMemory struct {
	Name       string
	Type       ebpf.MapType
	MaxEntries uint32
	KeySize    uint32
	ValueSize  uint32
	Flags      uint32
	Bytes      uint64 // memlock, at CPUs possible CPUs, as the map is now
	CPUs       int
}

// preallocated reports whether the kernel allocated every entry up front:
// hash maps without BPF_F_NO_PREALLOC, and arrays.
func (m MapMemory) preallocated() bool {
	switch m.Type {
	case ebpf.Hash, ebpf.PerCPUHash, ebpf.LRUHash, ebpf.LRUCPUHash:
		return m.Flags&unix.BPF_F_NO_PREALLOC == 0
	}
	return true
}

// PerCPU reports whether the map holds a value per possible CPU.
func (m MapMemory) PerCPU() bool { return perCPU(m.Type) }

// perCPU reports whether a map of type t holds a value per possible CPU.
func perCPU(t ebpf.MapType) bool {
	switch t {
	case ebpf.PerCPUHash, ebpf.PerCPUArray, ebpf.LRUCPUHash, ebpf.PerCPUCGroupStorage:
		return true
	}
	return false
}

// htabElem is the kernel's struct htab_elem before its key, about.
const htabElem = 48

// At returns the map's memory, full, on a machine with cpus possible CPUs:
// a per-CPU map holds one value (rounded up to 8 bytes) per entry and per
// possible CPU, and a preallocated per-CPU hash one spare entry per CPU
// besides. The other maps' memory hardly depends on the CPUs (a few locks
// and free lists). A hash map allocated as it fills (BPF_F_NO_PREALLOC)
// is counted as its max entries of elements, whatever it holds now.
func (m MapMemory) At(cpus int) uint64 {
	v := uint64(m.ValueSize+7) &^ 7
	if !m.preallocated() {
		e := htabElem + uint64(m.KeySize+7)&^7
		if m.PerCPU() {
			e += 8 + v*uint64(cpus)
		} else {
			e += v
		}
		return max(m.Bytes, uint64(m.MaxEntries)*e)
	}
	if !m.PerCPU() || cpus == m.CPUs {
		return m.Bytes
	}
	entries := func(n int) uint64 {
		e := uint64(m.MaxEntries)
		if m.Type == ebpf.PerCPUHash || m.Type == ebpf.LRUCPUHash {
			e += uint64(n) // preallocated spares, one a CPU
		}
		return e * v * uint64(n)
	}
	return m.Bytes - entries(m.CPUs) + entries(cpus)
}

// mapMemory reads the memory of every map in objs, a bpf2go struct of
// maps (bpfMaps), by their C names.
func mapMemory(objs any, ncpu int) ([]MapMemory, error) {
	var out []MapMemory
	v := reflect.ValueOf(objs)
	t := v.Type()
	for i := range t.NumField() {
		name := t.Field(i).Tag.Get("ebpf")
		m, ok := v.Field(i).Interface().(*ebpf.Map)
		if name == "" || !ok || m == nil {
			continue
		}
		mm, err := memoryOf(name, m, ncpu)
		if err != nil {
			return out, err
		}
		out = append(out, mm)
	}
	return out, nil
}

// MapMemoryOf reads the memory of m, called name: one of flowmap's maps
// found by its ID, as the bench finds an agent's.
func MapMemoryOf(name string, m *ebpf.Map) (MapMemory, error) {
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return MapMemory{}, fmt.Errorf("count possible CPUs: %w", err)
	}
	return memoryOf(name, m, ncpu)
}

func memoryOf(name string, m *ebpf.Map, ncpu int) (MapMemory, error) {
	info, err := m.Info()
	if err != nil {
		return MapMemory{}, fmt.Errorf("read info of map %s: %w", name, err)
	}
	memlock, _ := info.Memlock()
	return MapMemory{Name: name, Type: info.Type, MaxEntries: info.MaxEntries, KeySize: info.KeySize,
		ValueSize: info.ValueSize, Flags: info.Flags, Bytes: memlock, CPUs: ncpu}, nil
}

// MapsOf returns the memory of the maps programs use, as the kernel
// charges it now: flowmap's, by their ids, from its programs in another
// process (the bench's agent, the soak tests').
func MapsOf(progs ...*ebpf.Program) ([]MapMemory, error) {
	seen := map[ebpf.MapID]bool{}
	var out []MapMemory
	for _, p := range progs {
		info, err := p.Info()
		if err != nil {
			return nil, fmt.Errorf("read program info: %w", err)
		}
		ids, _ := info.MapIDs()
		for _, id := range ids {
			if seen[id] {
				continue
			}
			seen[id] = true
			m, err := ebpf.NewMapFromID(id)
			if err != nil {
				return nil, fmt.Errorf("open map %d: %w", id, err)
			}
			mi, err := m.Info()
			if err != nil {
				m.Close()
				return nil, fmt.Errorf("read map %d info: %w", id, err)
			}
			mm, err := MapMemoryOf(mi.Name, m)
			m.Close()
			if err != nil {
				return nil, err
			}
			out = append(out, mm)
		}
	}
	return out, nil
}
