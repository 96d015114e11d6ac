package model

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

func TestHealthAdd(t *testing.T) {
	a := Health{Attempts: 1, Established: 1, Drops: map[string]uint64{"NETFILTER_DROP": 2}, RTTSum: 10 * time.Millisecond, RTTSamples: 1}
	b := Health{Attempts: 2, SYNRetries: 4, Refused: 1, TimedOut: 1, ResetByClient: 1, ResetByServer: 2, Closed: 1,
		Unreachable: 1, TimeExceeded: 3, Drops: map[string]uint64{"NETFILTER_DROP": 1, "NO_SOCKET": 5},
		RTTSum: 30 * time.Millisecond, RTTSamples: 1}
	aDrops := a.Drops
	bCopy := b.Clone()
	a.Add(&b)
	want := Health{Attempts: 3, SYNRetries: 4, Established: 1, Refused: 1, TimedOut: 1, ResetByClient: 1,
		ResetByServer: 2, Closed: 1, Unreachable: 1, TimeExceeded: 3,
		Drops: map[string]uint64{"NETFILTER_DROP": 3, "NO_SOCKET": 5}, RTTSum: 40 * time.Millisecond, RTTSamples: 2}
	if !reflect.DeepEqual(a, want) {
		t.Errorf("sum = %+v, want %+v", a, want)
	}
	if aDrops["NETFILTER_DROP"] != 2 {
		t.Errorf("Add changed the drops map it replaced: %v", aDrops)
	}
	if !reflect.DeepEqual(b, bCopy) {
		t.Errorf("Add changed the added health: %+v, want %+v", b, bCopy)
	}
	if got := a.RTT(); got != 20*time.Millisecond {
		t.Errorf("RTT = %v, want 20ms", got)
	}
	if got := a.Dropped(); got != 8 {
		t.Errorf("Dropped = %d, want 8", got)
	}
	if got := a.Failed(); got != 5 {
		t.Errorf("Failed = %d, want 5", got)
	}
}

func TestHealthFailure(t *testing.T) {
	cases := []struct {
		h     Health
		want  string
		ratio float64
	}{
		{Health{}, "", 1},
		{Health{Attempts: 4, Established: 4, Closed: 4}, "", 1},
		{Health{Attempts: 4, Refused: 3, Established: 1}, "refused", 0.25},
		{Health{Attempts: 2, SYNRetries: 4, TimedOut: 2, Drops: map[string]uint64{"NETFILTER_DROP": 6}}, "drop:NETFILTER_DROP", 0},
		{Health{Attempts: 2, TimedOut: 2}, "timeout", 0},
		{Health{Established: 1, ResetByServer: 1}, "reset", 1},
		{Health{Unreachable: 2, Drops: map[string]uint64{"B": 1, "A": 1}}, "unreachable", 1},
		{Health{Drops: map[string]uint64{"B": 1, "A": 1}}, "drop:A", 1},
	}
	for _, tc := range cases {
		if got := tc.h.Failure(); got != tc.want {
			t.Errorf("%+v: Failure = %q, want %q", tc.h, got, tc.want)
		}
		if got := tc.h.SuccessRatio(); got != tc.ratio {
			t.Errorf("%+v: SuccessRatio = %v, want %v", tc.h, got, tc.ratio)
		}
	}
}

func TestRecordHealth(t *testing.T) {
	a, b := rec(10, nil), rec(10, nil)
	b.Health = &Health{Refused: 1, Drops: map[string]uint64{"X": 1}}
	a.Add(&b)
	if a.Health == b.Health || a.Health.Refused != 1 {
		t.Fatalf("Add: health %+v (shared %v), want a copy with Refused 1", a.Health, a.Health == b.Health)
	}
	a.Add(&b)
	if b.Health.Refused != 1 || b.Health.Drops["X"] != 1 {
		t.Errorf("Add changed the added record's health: %+v", b.Health)
	}
	c := a.Clone()
	c.Health.Drops["X"] = 100
	if a.Health.Drops["X"] != 2 {
		t.Errorf("Clone shares drops: %v", a.Health.Drops)
	}
	js, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	var back Record
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back.Health, a.Health) {
		t.Errorf("JSON round trip: %+v, want %+v", back.Health, a.Health)
	}
	m := Merge(Batch{Records: []Record{a}}, Batch{Records: []Record{b}})
	if got := m.Records[0].Health.Refused; got != 3 {
		t.Errorf("merged Refused = %d, want 3", got)
	}
	if a.Health.Refused != 2 {
		t.Errorf("Merge changed its input: Refused %d, want 2", a.Health.Refused)
	}
}
