package topology

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"sync"
	"time"
)

// Saved baselines: a snapshot kept under a name ("before-deploy") so that
// a diff can be taken against it after the graph's hour has moved past it.
// They are kept in memory, and bounded: at most MaxBaselines, of at most
// MaxBaselineEdges edges in all; saving past either drops the oldest.
//
//	POST   /api/v1/graph/baseline?name=NAME[&level=…&window=…]  save the snapshot taken now
//	GET    /api/v1/graph/baseline                              list them
//	DELETE /api/v1/graph/baseline?name=NAME                    forget one
//	GET    /api/v1/graph/diff?baseline=NAME[&factor=2]         what changed since, at its level and window
const (
	MaxBaselines     = 8
	MaxBaselineEdges = DefaultMaxEdges
)

// BaselineInfo describes a saved baseline: the JSON of the baseline API.
type BaselineInfo struct {
	Name   string `json:"name"`
	Level  Level  `json:"level"`
	Window Window `json:"window"`
	Nodes  int    `json:"nodes"`
	Edges  int    `json:"edges"`
}

type baseline struct {
	name   string
	snap   *Snapshot
	window time.Duration
}

// baselines are a handler's saved snapshots, oldest first.
type baselines struct {
	mu   sync.Mutex
	list []baseline
}

var baselineName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

func infoOf(b baseline) BaselineInfo {
	return BaselineInfo{Name: b.name, Level: b.snap.Level, Window: b.snap.Window, Nodes: len(b.snap.Nodes), Edges: len(b.snap.Edges)}
}

// save keeps s under name, replacing one of that name, and drops the
// oldest past the bounds. It fails if s alone is past MaxBaselineEdges.
func (bs *baselines) save(name string, s *Snapshot, window time.Duration) error {
	if len(s.Edges) > MaxBaselineEdges {
		return fmt.Errorf("baseline %s: %d edges, more than the %d kept", name, len(s.Edges), MaxBaselineEdges)
	}
	bs.mu.Lock()
	defer bs.mu.Unlock()
	bs.list = slices.DeleteFunc(bs.list, func(b baseline) bool { return b.name == name })
	bs.list = append(bs.list, baseline{name, s, window})
	edges := 0
	for _, b := range bs.list {
		edges += len(b.snap.Edges)
	}
	for len(bs.list) > MaxBaselines || edges > MaxBaselineEdges {
		edges -= len(bs.list[0].snap.Edges)
		bs.list = slices.Delete(bs.list, 0, 1)
	}
	return nil
}

func (bs *baselines) get(name string) (baseline, bool) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	for _, b := range bs.list {
		if b.name == name {
			return b, true
		}
	}
	return baseline{}, false
}

func (bs *baselines) remove(name string) bool {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	n := len(bs.list)
	bs.list = slices.DeleteFunc(bs.list, func(b baseline) bool { return b.name == name })
	return len(bs.list) < n
}

func (bs *baselines) infos() []BaselineInfo {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	out := make([]BaselineInfo, 0, len(bs.list))
	for _, b := range bs.list {
		out = append(out, infoOf(b))
	}
	return out
}

// saveBaseline answers POST /api/v1/graph/baseline.
func (h *handler) saveBaseline(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("name")
	if !baselineName.MatchString(name) {
		http.Error(w, fmt.Sprintf("name %q: want 1 to 64 letters, digits, '.', '_' or '-'", name), http.StatusBadRequest)
		return
	}
	level, window, ok := h.params(w, r)
	if !ok {
		return
	}
	s, ok := h.take(w, r, h.now(), level, window)
	if !ok {
		return
	}
	if err := h.baselines.save(name, s, window); err != nil {
		http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
		return
	}
	h.log.Info("baseline saved", "name", name, "level", s.Level, "window", s.Window.Name, "edges", len(s.Edges))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(infoOf(baseline{name, s, window}))
}

func (h *handler) listBaselines(w http.ResponseWriter, _ *http.Request) {
	h.write(w, "application/json", func(b io.Writer) error { return json.NewEncoder(b).Encode(h.baselines.infos()) })
}

func (h *handler) deleteBaseline(w http.ResponseWriter, r *http.Request) {
	if !h.baselines.remove(r.URL.Query().Get("name")) {
		http.Error(w, fmt.Sprintf("no baseline %q", r.URL.Query().Get("name")), http.StatusNotFound)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// savedBaseline returns the baseline the diff request names, and the
// level and window to compare it at: its own. It answers 404 for a name
// not saved, and 400 for a level or window other than the baseline's.
func (h *handler) savedBaseline(w http.ResponseWriter, r *http.Request) (*Snapshot, Level, time.Duration, bool) {
	q := r.URL.Query()
	b, ok := h.baselines.get(q.Get("baseline"))
	if !ok {
		http.Error(w, fmt.Sprintf("no baseline %q", q.Get("baseline")), http.StatusNotFound)
		return nil, "", 0, false
	}
	if v := q.Get("level"); v != "" && v != string(b.snap.Level) {
		http.Error(w, fmt.Sprintf("level %s: baseline %s is at level %s", v, b.name, b.snap.Level), http.StatusBadRequest)
		return nil, "", 0, false
	}
	if v := q.Get("window"); v != "" && v != b.snap.Window.Name {
		http.Error(w, fmt.Sprintf("window %s: baseline %s is over %s", v, b.name, b.snap.Window.Name), http.StatusBadRequest)
		return nil, "", 0, false
	}
	return b.snap, b.snap.Level, b.window, true
}
