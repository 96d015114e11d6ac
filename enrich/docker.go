package enrich

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/flowmap/flowmap/model"
)

// engineSource reads the Docker Engine API, or Podman's Docker-compatible
// one, on a unix socket: each container's name, image, labels, addresses
// and network namespace, and follows the engine's events so that a new
// container is known as soon as it starts.
//
// It speaks the few calls it needs over net/http with a unix dialer rather
// than import the Docker client module, whose dependencies (the whole
// moby tree) outweigh three GET requests; the calls are unversioned, so
// the engine answers with its own API version, which both Docker (≥ 1.24)
// and Podman's compat API do.
type engineSource struct {
	socket   string
	procRoot string
	client   *http.Client
}

func newEngineSource(socket, procRoot string) *engineSource {
	return &engineSource{
		socket:   socket,
		procRoot: procRoot,
		client: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			},
			MaxIdleConns:    2,
			IdleConnTimeout: 30 * time.Second,
		}},
	}
}

// engineError is an error of reason: "connect", "api", "decode", "events".
type engineError struct {
	reason string
	err    error
}

func (e *engineError) Error() string { return e.err.Error() }
func (e *engineError) Unwrap() error { return e.err }

func reasonOf(err error, def string) string {
	if e, ok := errors.AsType[*engineError](err); ok {
		return e.reason
	}
	return def
}

func (e *engineSource) run(ctx context.Context, s *sourceState) error {
	for attempt := 0; ; attempt++ {
		synced, err := e.session(ctx, s)
		if ctx.Err() != nil {
			return nil
		}
		if synced {
			attempt = 0
		}
		s.fail(reasonOf(err, "events"), err)
		if !backoff(ctx, attempt) {
			return nil
		}
	}
}

// session follows the engine's events and lists its containers, until
// the events end or fail; synced tells whether it listed them.
func (e *engineSource) session(ctx context.Context, s *sourceState) (synced bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Follow events first and list second: a container that starts in
	// between is in both, and inspecting it twice does no harm.
	events := make(chan engineEvent, 64)
	evErr := make(chan error, 1)
	go func() { evErr <- e.events(ctx, events) }()

	known := make(map[string]record)
	if err := e.list(ctx, s, known); err != nil {
		return false, err
	}
	s.publish(snapshot(known))
	tick := time.NewTicker(s.inv.cfg.Resync)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return true, nil
		case err := <-evErr:
			return true, err
		case ev := <-events:
			if err := e.apply(ctx, s, known, ev); err != nil {
				return true, err
			}
		case <-tick.C:
			clear(known)
			if err := e.list(ctx, s, known); err != nil {
				return true, err
			}
		}
		s.publish(snapshot(known))
	}
}

func snapshot(m map[string]record) []record {
	out := make([]record, 0, len(m))
	for _, r := range m {
		out = append(out, r)
	}
	return out
}

// engineEvent is an entry of GET /events.
type engineEvent struct {
	Type   string `json:"Type"`
	Action string `json:"Action"`
	Actor  struct {
		ID         string            `json:"ID"`
		Attributes map[string]string `json:"Attributes"`
	} `json:"Actor"`
}

// events sends the container and network events of the engine to out
// until ctx is done or the stream ends, which is an error.
func (e *engineSource) events(ctx context.Context, out chan<- engineEvent) error {
	filters := url.QueryEscape(`{"type":["container","network"]}`)
	resp, err := e.get(ctx, "/events?filters="+filters)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var ev engineEvent
		if err := dec.Decode(&ev); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return &engineError{"events", fmt.Errorf("events from %s: stream ended", e.socket)}
			}
			return &engineError{"decode", fmt.Errorf("decode event from %s: %w", e.socket, err)}
		}
		select {
		case out <- ev:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// apply updates known after one event.
func (e *engineSource) apply(ctx context.Context, s *sourceState, known map[string]record, ev engineEvent) error {
	id := ev.Actor.ID
	if ev.Type == "network" {
		// connect and disconnect change a container's addresses.
		id = ev.Actor.Attributes["container"]
	} else if ev.Type != "container" {
		return nil
	}
	if id == "" {
		return nil
	}
	switch ev.Action {
	case "destroy", "die", "remove", "died": // Docker's, and Podman's own
		delete(known, id)
		return nil
	case "start", "restart", "rename", "update", "unpause", "connect", "disconnect":
	default:
		return nil
	}
	rec, running, err := e.inspect(ctx, id)
	if err != nil {
		if reasonOf(err, "") == "connect" {
			return err
		}
		// The container may be gone again, or its answer bad: skip it.
		s.bad(reasonOf(err, "api"), err)
		return nil
	}
	if running {
		known[id] = rec
	} else {
		delete(known, id)
	}
	return nil
}

// list inspects every running container into known.
func (e *engineSource) list(ctx context.Context, s *sourceState, known map[string]record) error {
	var list []struct {
		ID string `json:"Id"`
	}
	if err := e.getJSON(ctx, "/containers/json", &list); err != nil {
		return err
	}
	for _, c := range list {
		rec, running, err := e.inspect(ctx, c.ID)
		if err != nil {
			if reasonOf(err, "") == "connect" {
				return err
			}
			s.bad(reasonOf(err, "api"), err)
			continue
		}
		if running {
			known[c.ID] = rec
		}
	}
	return nil
}

// engineContainer is the part of GET /containers/{id}/json we read.
type engineContainer struct {
	ID     string `json:"Id"`
	Name   string `json:"Name"`
	Config struct {
		Image  string            `json:"Image"`
		Labels map[string]string `json:"Labels"`
	} `json:"Config"`
	State struct {
		Running bool `json:"Running"`
		Pid     int  `json:"Pid"`
	} `json:"State"`
	HostConfig struct {
		NetworkMode string `json:"NetworkMode"`
	} `json:"HostConfig"`
	NetworkSettings struct {
		Networks map[string]struct {
			IPAddress         string `json:"IPAddress"`
			GlobalIPv6Address string `json:"GlobalIPv6Address"`
		} `json:"Networks"`
	} `json:"NetworkSettings"`
}

// inspect reads one container.
func (e *engineSource) inspect(ctx context.Context, id string) (record, bool, error) {
	var c engineContainer
	if err := e.getJSON(ctx, "/containers/"+url.PathEscape(id)+"/json", &c); err != nil {
		return record{}, false, err
	}
	if c.ID == "" {
		return record{}, false, &engineError{"decode", fmt.Errorf("inspect container %s: no id in the answer", id)}
	}
	ep := model.Endpoint{
		Kind:   model.KindContainer,
		ID:     c.ID,
		Name:   strings.TrimPrefix(c.Name, "/"),
		Image:  c.Config.Image,
		Labels: c.Config.Labels,
	}
	if svc := c.Config.Labels["com.docker.compose.service"]; svc != "" {
		ep.Workload, ep.WorkloadKind = svc, "compose-service"
	}
	for _, n := range c.NetworkSettings.Networks {
		for _, s := range []string{n.IPAddress, n.GlobalIPv6Address} {
			if a, err := netip.ParseAddr(s); err == nil {
				ep.Addrs = append(ep.Addrs, a.Unmap())
			}
		}
	}
	if c.State.Pid > 0 {
		dir := filepath.Join(e.procRoot, strconv.Itoa(c.State.Pid), "ns")
		// Where the agent does not share the host's PID namespace, these
		// fail and the container is joined by id and address alone.
		ep.PIDNS, _ = nsInode(filepath.Join(dir, "pid"))
		// A container on the host's network shares the host's namespace
		// with every other such container: that joins nothing.
		if c.HostConfig.NetworkMode != "host" {
			ep.NetNS, _ = nsInode(filepath.Join(dir, "net"))
		}
	}
	return record{ep: ep, keys: []joinKey{containerKey(c.ID)}}, c.State.Running, nil
}

func (e *engineSource) get(ctx context.Context, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://engine"+path, nil)
	if err != nil {
		return nil, fmt.Errorf("make request %s: %w", path, err)
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return nil, &engineError{"connect", fmt.Errorf("get %s from %s: %w", path, e.socket, err)}
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		return nil, &engineError{"api", fmt.Errorf("get %s from %s: %s: %s", path, e.socket, resp.Status, strings.TrimSpace(string(b)))}
	}
	return resp, nil
}

// getJSON decodes the answer to a GET of path into v, within 10s.
func (e *engineSource) getJSON(ctx context.Context, path string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := e.get(ctx, path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(v); err != nil {
		return &engineError{"decode", fmt.Errorf("decode %s from %s: %w", path, e.socket, err)}
	}
	return nil
}
