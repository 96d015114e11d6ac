package flows

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

func TestZZExplore(t *testing.T) {
	t0 := time.Now()
	var objs bpfObjects
	if err := loadBpfObjects(&objs, nil); err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	t.Logf("load %v", time.Since(t0))
	t0 = time.Now()
	ks, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatal(err)
	}
	var s *btf.Struct
	if err := ks.TypeByName("__sk_buff", &s); err != nil {
		t.Fatal(err)
	}
	t.Logf("btf %v size %d", time.Since(t0), s.Size)
	off := map[string]uint32{}
	for _, m := range s.Members {
		off[m.Name] = m.Offset.Bytes()
	}
	t.Log(off)
	pkt := make([]byte, 64)
	pkt[12], pkt[13] = 0x08, 0x00
	pkt[14] = 0x45
	pkt[23] = 6
	pkt[14+20+12] = 0x50
	ctx := make([]byte, s.Size)
	binary.LittleEndian.PutUint32(ctx[off["gso_segs"]:], 4)
	binary.LittleEndian.PutUint32(ctx[off["ingress_ifindex"]:], 7)
	out := make([]byte, 200)
	ret, err := objs.TcIngress.Run(&ebpf.RunOptions{Data: pkt, DataOut: out, Context: ctx})
	t.Logf("ret %x err %v", ret, err)
	var e *btf.Enum
	if err := ks.TypeByName("xdp_action", &e); err != nil {
		t.Fatal(err)
	}
	t.Log(e.Values)
	var x *btf.Struct
	ks.TypeByName("xdp_md", &x)
	xoff := map[string]uint32{}
	for _, m := range x.Members {
		xoff[m.Name] = m.Offset.Bytes()
	}
	t.Log(xoff, x.Size)
	xctx := make([]byte, x.Size)
	binary.LittleEndian.PutUint32(xctx[xoff["data"]:], 8)
	for _, n := range []uint32{20, 21, 22, 24, 28, 40} {
		binary.LittleEndian.PutUint32(xctx[xoff["data_end"]:], n)
		ret, err = objs.XdpIngress.Run(&ebpf.RunOptions{Data: make([]byte, n), Context: xctx})
		t.Logf("xdp %d ret %x err %v", n, ret, err)
	}
	var percpu []uint64
	objs.Counters.Lookup(uint32(bpfCounterCOUNTER_NON_IP), &percpu)
	t.Log("nonip", percpu)
	var k bpfFlowKey
	var v []bpfFlowStats
	it := objs.FlowsA.Iterate()
	for it.Next(&k, &v) {
		t.Logf("%+v %+v", k, v)
	}
}
