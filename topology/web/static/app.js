// The live map: draws /api/v1/graph with cytoscape.js and the dagre layout,
// refreshes it in place every drain interval (only new nodes are placed;
// the rest keep their positions), and highlights /api/v1/graph/diff.
// Every control lives in the URL's hash, so a view can be shared.
'use strict';
(function () {
  const LEVELS = ['container', 'pod', 'workload', 'namespace', 'host'];
  const DEFAULTS = { level: 'workload', window: '5m', diff: '', ns: '', proto: '', port: '', min: '', ext: '1', q: '', focus: '', hops: '1', sel: '' };
  const $ = (id) => document.getElementById(id);

  // What tests and benchmarks read: the cytoscape instance, the snapshot
  // drawn, and timings (ms) of the first render and the last refresh.
  const fm = window.flowmap = { cy: null, snapshot: null, diff: null, ready: false, refreshes: 0, errors: [], timings: {} };

  let cfg = { refresh_ms: 5000, source: 'agent', max_nodes: 2000 };
  let state = readHash();
  let drawnKey = ''; // level and window drawn: another needs a whole new layout
  let inFlight = null, pending = null;

  function readHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    const s = Object.assign({}, DEFAULTS);
    for (const k of Object.keys(DEFAULTS)) if (p.has(k)) s[k] = p.get(k);
    if (!LEVELS.includes(s.level)) s.level = DEFAULTS.level;
    return s;
  }

  function writeHash() {
    const p = new URLSearchParams();
    for (const k of Object.keys(DEFAULTS)) if (state[k] !== DEFAULTS[k]) p.set(k, state[k]);
    const h = p.toString();
    history.replaceState(null, '', h ? '#' + h : location.pathname + location.search);
  }

  function set(changes) {
    Object.assign(state, changes);
    writeHash();
    syncControls();
  }

  // ---- numbers

  function bytes(n) {
    const u = ['B', 'kB', 'MB', 'GB', 'TB'];
    let i = 0;
    while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
    return (i ? n.toFixed(n < 10 ? 2 : 1) : String(Math.round(n))) + ' ' + u[i];
  }
  const rate = (n) => bytes(n) + '/s';
  const per = (n) => (n < 10 ? n.toFixed(2) : n.toFixed(1)) + '/s';
  function dur(ns) {
    if (ns == null) return '–';
    if (ns < 1e3) return ns + ' ns';
    if (ns < 1e6) return (ns / 1e3).toFixed(1) + ' µs';
    if (ns < 1e9) return (ns / 1e6).toFixed(1) + ' ms';
    return (ns / 1e9).toFixed(2) + ' s';
  }
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));

  function seconds(snap) {
    return Math.max((Date.parse(snap.window.end) - Date.parse(snap.window.start)) / 1000, 1);
  }
  const edgeBytes = (e) => e.forward.bytes + e.reverse.bytes;
  function errorRatio(e) {
    return e.l7 && e.l7.requests > 0 ? (e.l7.errors || 0) / e.l7.requests : null;
  }
  function colour(ratio) {
    if (ratio == null) return '#9aa3ad';
    if (ratio < 0.01) return '#2e9d5b';
    if (ratio < 0.05) return '#e0a100';
    return '#d64545';
  }
  const width = (r) => Math.min(1 + 2 * Math.log10(1 + r / 100), 12);
  const external = (n) => n && (n.kind === 'external' || n.kind === 'unknown');

  // ---- fetching

  async function getJSON(url) {
    const r = await fetch(url, { cache: 'no-store' });
    if (!r.ok) throw new Error(url + ': ' + r.status + ' ' + (await r.text()).trim());
    return r.json();
  }

  function graphURL(level, format) {
    const p = new URLSearchParams({ level: level, window: state.window });
    if (format) p.set('format', format);
    return 'api/v1/graph?' + p;
  }

  // fetchGraph gets the snapshot at the state's level, or, past max_nodes,
  // at the first coarser level that fits.
  async function fetchGraph() {
    let level = state.level;
    let snap = await getJSON(graphURL(level));
    let rolled = null;
    while (snap.nodes.length > cfg.max_nodes && LEVELS.indexOf(level) < LEVELS.length - 1) {
      const from = { level: level, nodes: snap.nodes.length };
      level = LEVELS[LEVELS.indexOf(level) + 1];
      snap = await getJSON(graphURL(level));
      rolled = rolled || from;
    }
    let diff = null;
    if (state.diff) {
      const p = new URLSearchParams({ level: level, window: state.window, since: state.diff });
      diff = await getJSON('api/v1/graph/diff?' + p);
    }
    return { snap, diff, rolled };
  }

  // ---- what is drawn

  // view filters the snapshot as the controls say: the edges kept, and the
  // nodes they join.
  function view(snap) {
    const nodes = new Map(snap.nodes.map((n) => [n.id, n]));
    const secs = seconds(snap);
    const nss = state.ns ? new Set(state.ns.split(',').map((s) => s.trim()).filter(Boolean)) : null;
    const port = state.port ? Number(state.port) : null;
    const min = state.min ? Number(state.min) : 0;
    let edges = snap.edges.filter((e) => {
      if (state.proto && e.protocol !== state.proto) return false;
      if (port != null && e.port !== port) return false;
      if (min > 0 && edgeBytes(e) / secs < min) return false;
      const s = nodes.get(e.source), t = nodes.get(e.target);
      if (state.ext !== '1' && (external(s) || external(t))) return false;
      if (nss && !((s && nss.has(s.namespace)) || (t && nss.has(t.namespace)))) return false;
      return true;
    });
    if (state.focus && nodes.has(state.focus)) {
      const hops = Math.max(1, Number(state.hops) || 1);
      const near = new Set([state.focus]);
      let frontier = [state.focus];
      for (let i = 0; i < hops && frontier.length; i++) {
        const next = [];
        for (const e of edges) {
          for (const [a, b] of [[e.source, e.target], [e.target, e.source]]) {
            if (frontier.includes(a) && !near.has(b)) { near.add(b); next.push(b); }
          }
        }
        frontier = next;
      }
      edges = edges.filter((e) => near.has(e.source) && near.has(e.target));
    }
    const kept = new Map();
    for (const e of edges) {
      kept.set(e.source, nodes.get(e.source));
      kept.set(e.target, nodes.get(e.target));
    }
    return { nodes: kept, edges, secs };
  }

  // groupOf returns the compound boxes a node sits in: its namespace on its
  // host, inside its host.
  function groupsOf(n) {
    const out = [];
    if (!n || n.kind === 'host') return out;
    if (n.host) out.push({ id: 'g:host:' + n.host, label: n.host, kind: 'hostgroup' });
    if (n.namespace && n.kind !== 'namespace') {
      out.push({ id: 'g:ns:' + (n.host || '') + '/' + n.namespace, label: n.namespace, kind: 'nsgroup', parent: n.host ? 'g:host:' + n.host : undefined });
    }
    return out;
  }

  function elements(v, diff) {
    const added = new Set(), changed = new Set(), removed = [];
    if (diff) {
      for (const c of diff.nodes) if (c.change === 'added') added.add(c.id);
      for (const c of diff.edges) {
        if (c.changes.includes('added')) added.add(c.id);
        else if (c.changes.includes('removed')) removed.push(c);
        else changed.add(c.id);
      }
    }
    const groups = new Map(), nodes = [], edges = [];
    for (const [id, n] of v.nodes) {
      const gs = groupsOf(n);
      for (const g of gs) groups.set(g.id, g);
      const classes = [n.kind];
      if (added.has(id)) classes.push('added');
      nodes.push({ group: 'nodes', data: { id, label: n.name || id, kind: n.kind, parent: gs.length ? gs[gs.length - 1].id : undefined }, classes: classes.join(' ') });
    }
    // Past 1,500 edges, straight lines without labels: bezier bundles and
    // labels are most of the drawing time of a large map.
    const many = v.edges.length > 1500;
    for (const e of v.edges) {
      const r = edgeBytes(e) / v.secs;
      const classes = many ? ['many'] : [];
      if (added.has(e.id)) classes.push('added');
      if (changed.has(e.id)) classes.push('changed');
      edges.push({ group: 'edges', data: { id: e.id, source: e.source, target: e.target, label: e.protocol + '/' + e.port, width: width(r), colour: colour(errorRatio(e)) }, classes: classes.join(' ') });
    }
    for (const c of removed) {
      if (v.nodes.has(c.source) && v.nodes.has(c.target)) {
        edges.push({ group: 'edges', data: { id: 'gone:' + c.id, source: c.source, target: c.target, label: 'gone', width: 1.5, colour: '#9aa3ad', gone: c.id }, classes: 'removed' });
      }
    }
    const gl = [...groups.values()].map((g) => ({ group: 'nodes', data: { id: g.id, label: g.label, kind: g.kind, parent: g.parent }, classes: g.kind }));
    // Host boxes before the namespace boxes inside them.
    gl.sort((a, b) => (a.data.kind === b.data.kind ? 0 : a.data.kind === 'hostgroup' ? -1 : 1));
    return { groups: gl, nodes, edges };
  }

  // ---- cytoscape

  function makeCy(big) {
    const cy = cytoscape({
      container: $('cy'),
      minZoom: 0.02,
      maxZoom: 4,
      wheelSensitivity: 0.3,
      textureOnViewport: big,
      hideEdgesOnViewport: big,
      motionBlur: big,
      pixelRatio: big ? 1 : 'auto',
      style: [
        { selector: 'node', style: { 'label': 'data(label)', 'font-size': 11, 'min-zoomed-font-size': 7, 'text-valign': 'bottom', 'text-margin-y': 3, 'width': 22, 'height': 22, 'background-color': '#3a78c2', 'border-width': 0 } },
        { selector: 'node.external, node.unknown', style: { 'background-color': '#8d6cab', 'shape': 'diamond' } },
        { selector: 'node.host', style: { 'background-color': '#4a5568', 'shape': 'round-rectangle' } },
        { selector: 'node.namespace', style: { 'shape': 'round-hexagon' } },
        { selector: 'node.overflow', style: { 'background-color': '#c53030', 'shape': 'octagon' } },
        { selector: ':parent', style: { 'background-opacity': 0.05, 'background-color': '#3a78c2', 'border-width': 1, 'border-color': '#b8c2cf', 'text-valign': 'top', 'text-halign': 'center', 'font-size': 12, 'color': '#5a6270', 'padding': 14, 'shape': 'round-rectangle' } },
        { selector: 'node.hostgroup', style: { 'background-color': '#4a5568', 'background-opacity': 0.04, 'border-style': 'solid' } },
        { selector: 'node.nsgroup', style: { 'border-style': 'dashed' } },
        { selector: 'edge', style: { 'width': 'data(width)', 'line-color': 'data(colour)', 'target-arrow-color': 'data(colour)', 'target-arrow-shape': 'triangle', 'arrow-scale': 0.8, 'curve-style': 'bezier', 'label': 'data(label)', 'font-size': 9, 'min-zoomed-font-size': 9, 'color': '#5a6270', 'text-rotation': 'autorotate', 'text-background-color': '#fff', 'text-background-opacity': 0.8, 'text-background-padding': 1 } },
        { selector: 'edge.added', style: { 'line-style': 'solid', 'underlay-color': '#2f6fdf', 'underlay-opacity': 0.35, 'underlay-padding': 4 } },
        { selector: 'edge.changed', style: { 'underlay-color': '#9b4dca', 'underlay-opacity': 0.35, 'underlay-padding': 4 } },
        { selector: 'edge.many', style: { 'curve-style': 'straight', 'label': '' } },
        { selector: 'edge.removed', style: { 'line-style': 'dashed', 'opacity': 0.6, 'target-arrow-shape': 'none' } },
        { selector: 'node.added', style: { 'border-width': 4, 'border-color': '#2f6fdf' } },
        { selector: '.match', style: { 'border-width': 4, 'border-color': '#f08c00' } },
        { selector: ':selected', style: { 'overlay-color': '#f08c00', 'overlay-opacity': 0.25, 'overlay-padding': 5 } },
      ],
    });
    cy.on('tap', 'node, edge', (ev) => {
      if (ev.target.isParent && ev.target.isParent()) return;
      set({ sel: ev.target.id() });
      showDetails();
    });
    cy.on('tap', (ev) => {
      if (ev.target === cy) { set({ sel: '' }); showDetails(); }
    });
    return cy;
  }

  // place gives each new node a position near what it talks to: right of
  // its clients, left of its servers, below what is already there; so the
  // nodes already drawn keep theirs.
  function place(cy, nodes, edges) {
    const peers = new Map();
    for (const e of edges) {
      if (!peers.has(e.data.source)) peers.set(e.data.source, []);
      if (!peers.has(e.data.target)) peers.set(e.data.target, []);
      peers.get(e.data.target).push({ id: e.data.source, dx: 180 });
      peers.get(e.data.source).push({ id: e.data.target, dx: -180 });
    }
    const taken = [];
    cy.nodes().forEach((n) => { if (!n.isParent()) taken.push(n.position()); });
    const bb = cy.nodes().length ? cy.nodes().boundingBox() : { x1: 0, x2: 0, y1: 0, y2: 0 };
    const free = (p) => {
      for (let i = 0; i < 200; i++) {
        if (!taken.some((q) => Math.abs(q.x - p.x) < 40 && Math.abs(q.y - p.y) < 40)) break;
        p = { x: p.x, y: p.y + 50 };
      }
      taken.push(p);
      return p;
    };
    for (const n of nodes) {
      let xs = 0, ys = 0, k = 0;
      for (const p of peers.get(n.data.id) || []) {
        const q = cy.getElementById(p.id);
        if (q.length && !q.isParent()) { xs += q.position('x') + p.dx; ys += q.position('y'); k++; }
      }
      let pos;
      if (k) pos = { x: xs / k, y: ys / k };
      else {
        const g = n.data.parent && cy.getElementById(n.data.parent);
        if (g && g.length && g.children().length) {
          const gb = g.children().boundingBox();
          pos = { x: (gb.x1 + gb.x2) / 2, y: gb.y2 + 50 };
        } else pos = { x: bb.x2 + 120, y: bb.y1 };
      }
      n.position = free(pos);
    }
  }

  // draw puts the elements on the map: a whole layout on a new level or
  // window, else an update in place.
  function draw(els, relayout) {
    const big = els.edges.length > 1500;
    if (relayout && big !== fm.big) {
      // Pan and zoom a large map on a texture, without edges meanwhile:
      // options cytoscape takes only when it starts.
      fm.cy.destroy();
      fm.cy = makeCy(big);
      fm.big = big;
    }
    const cy = fm.cy;
    const want = new Set();
    for (const l of [els.groups, els.nodes, els.edges]) for (const e of l) want.add(e.data.id);
    let added = 0;
    const t0 = performance.now();
    // Out of the batch: removing and adding an element of the same ID in
    // one batch leaves cytoscape's style triggers with the removed one.
    if (relayout) cy.elements().remove();
    // A large map is laid out before it is added: positions given with the
    // elements spare cytoscape a pass over every compound box per node.
    const banded = relayout && els.nodes.length > DAGRE_MAX;
    if (banded) {
      const pos = bands(els);
      for (const n of els.nodes) n.position = pos[n.data.id];
    }
    cy.batch(() => {
      // Boxes first, so nodes can move into them.
      for (const g of els.groups) {
        const have = cy.getElementById(g.data.id);
        if (!have.length) cy.add(g);
      }
      const fresh = [];
      for (const n of els.nodes) {
        const have = cy.getElementById(n.data.id);
        if (!have.length) { fresh.push(n); continue; }
        const parent = have.parent().length ? have.parent().id() : undefined;
        if (parent !== n.data.parent) have.move({ parent: n.data.parent || null });
        if (have.data('label') !== n.data.label) have.data('label', n.data.label);
        have.classes(n.classes);
      }
      cy.edges().forEach((e) => { if (!want.has(e.id())) e.remove(); });
      cy.nodes().filter((n) => !n.isParent() && !want.has(n.id())).remove();
      // Boxes left empty, innermost first.
      for (let i = 0; i < 2; i++) cy.nodes().filter((n) => !want.has(n.id()) && n.children().length === 0).remove();
      if (!relayout) place(cy, fresh, els.edges);
      cy.add(fresh);
      added = fresh.length;
      for (const e of els.edges) {
        const have = cy.getElementById(e.data.id);
        if (!have.length) { cy.add(e); continue; }
        if (have.data('width') !== e.data.width || have.data('colour') !== e.data.colour) {
          have.data({ width: e.data.width, colour: e.data.colour });
        }
        have.classes(e.classes);
      }
    });
    const t1 = performance.now();
    fm.timings.phases = { add: t1 - t0 };
    if (relayout && cy.nodes().length) {
      if (!banded) {
        cy.layout({ name: 'dagre', rankDir: 'LR', nodeSep: 14, rankSep: 140, edgeSep: 6, fit: true, padding: 30, animate: false }).run();
      } else {
        cy.fit(undefined, 30);
      }
      fm.timings.phases.layout = performance.now() - t1;
    }
    return added;
  }

  // DAGRE_MAX is the most nodes dagre lays out: its crossing reduction on
  // compound graphs takes minutes at 2,000 nodes. Past it, bands does.
  const DAGRE_MAX = 400;

  // bands is a layered layout in linear time for large maps: each node's
  // rank is its longest path from a client that is no one's server (cycles
  // broken where they block), which keeps the flow left to right; each
  // namespace box (in its host box) is a horizontal band of its own, so
  // boxes never overlap, and within a band a rank is a column.
  function bands(els) {
    const ids = els.nodes.map((n) => n.data.id);
    const index = new Map(ids.map((id, i) => [id, i]));
    const outs = ids.map(() => []), indeg = new Int32Array(ids.length);
    for (const e of els.edges) {
      const a = index.get(e.data.source), b = index.get(e.data.target);
      if (a === undefined || b === undefined || a === b) continue;
      outs[a].push(b);
      indeg[b]++;
    }
    const rank = new Int32Array(ids.length), done = new Uint8Array(ids.length);
    const queue = [];
    for (let i = 0; i < ids.length; i++) if (indeg[i] === 0) queue.push(i);
    let left = ids.length, next = 0;
    while (left > 0) {
      if (next === queue.length) {
        // A cycle: start from the node left with the fewest clients.
        let best = -1;
        for (let i = 0; i < ids.length; i++) if (!done[i] && (best < 0 || indeg[i] < indeg[best])) best = i;
        queue.push(best);
      }
      const u = queue[next++];
      if (done[u]) continue;
      done[u] = 1;
      left--;
      for (const v of outs[u]) {
        if (done[v]) continue;
        rank[v] = Math.max(rank[v], rank[u] + 1);
        if (--indeg[v] === 0) queue.push(v);
      }
    }
    // Bands by box, in host then namespace order.
    const bandOf = new Map();
    els.nodes.forEach((n, i) => {
      const key = n.data.parent || '~';
      if (!bandOf.has(key)) bandOf.set(key, []);
      bandOf.get(key).push(i);
    });
    const keys = [...bandOf.keys()].sort();
    const pos = {};
    const dx = 180, dy = 44, gap = 70;
    let y = 0;
    for (const key of keys) {
      const cols = new Map();
      for (const i of bandOf.get(key).sort((a, b) => (ids[a] < ids[b] ? -1 : 1))) {
        if (!cols.has(rank[i])) cols.set(rank[i], 0);
        const row = cols.get(rank[i]);
        cols.set(rank[i], row + 1);
        pos[ids[i]] = { x: rank[i] * dx, y: y + row * dy };
      }
      y += Math.max(...cols.values()) * dy + gap;
    }
    return pos;
  }

  // ---- the page

  function syncControls() {
    for (const k of ['level', 'window', 'diff', 'ns', 'proto', 'port', 'min', 'q', 'hops']) {
      if ($(k).value !== state[k]) $(k).value = state[k];
    }
    $('ext').checked = state.ext === '1';
    $('focusbox').hidden = !state.focus;
    $('focusname').textContent = state.focus;
  }

  function showStatus(extra) {
    const s = fm.snapshot;
    if (!s) return;
    const v = fm.view;
    $('status').textContent = `${v.nodes.size} of ${s.nodes.length} nodes, ${v.edges.length} of ${s.edges.length} edges · ${s.level}, last ${s.window.name} · ` +
      `updated ${new Date().toLocaleTimeString()}` + (extra || '');
  }

  function showDetails() {
    const box = $('details'), body = $('detailsbody');
    const s = fm.snapshot;
    if (!state.sel || !s) { box.hidden = true; return; }
    const edge = s.edges.find((e) => e.id === state.sel);
    const node = s.nodes.find((n) => n.id === state.sel);
    if (!edge && !node) { box.hidden = true; return; }
    box.hidden = false;
    body.innerHTML = edge ? edgeHTML(s, edge) : nodeHTML(s, node);
    const f = body.querySelector('[data-focus]');
    if (f) f.onclick = () => { set({ focus: f.dataset.focus }); refresh(); };
  }

  const row = (k, v, cls) => `<tr><td>${esc(k)}</td><td class="${cls || ''}">${v}</td></tr>`;

  function links(s) {
    return `<h3>behind it</h3><a href="${graphURL(s.level, 'json')}">JSON</a> · <a href="${graphURL(s.level, 'dot')}">DOT</a> · <a href="${graphURL(s.level, 'svg')}">SVG</a>`;
  }

  // promql returns the query of the series behind an edge (agents export
  // them at their --metrics-level; see topology/prometheus.go).
  function promql(s, e) {
    const n = (id) => s.nodes.find((x) => x.id === id) || {};
    const src = n(e.source), dst = n(e.target);
    const sel = `src_kind="${src.kind}",src_namespace="${src.namespace || ''}",src="${src.name}",dst_kind="${dst.kind}",dst_namespace="${dst.namespace || ''}",dst="${dst.name}",proto="${e.protocol}",port="${e.port}"`;
    return [
      `sum by (direction) (rate(flowmap_flow_bytes_total{${sel}}[${s.window.name}]))`,
      `sum(rate(flowmap_tcp_connections_total{${sel},outcome="attempted"}[${s.window.name}]))`,
    ];
  }

  function queries(qs) {
    return '<h3>Prometheus queries</h3>' + qs.map((q) => cfg.prometheus
      ? `<code><a href="${esc(cfg.prometheus.replace(/\/$/, '') + '/graph?g0.tab=0&g0.expr=' + encodeURIComponent(q))}">${esc(q)}</a></code>`
      : `<code>${esc(q)}</code>`).join('');
  }

  function labels(n) {
    if (!n) return '';
    let h = row('kind', esc(n.kind));
    if (n.namespace) h += row('namespace', esc(n.namespace));
    if (n.workload) h += row('workload', esc(n.workload) + (n.workload_kind ? ' (' + esc(n.workload_kind) + ')' : ''));
    if (n.host) h += row('host', esc(n.host));
    if (n.addrs && n.addrs.length) h += row('addresses', esc(n.addrs.join(', ')));
    if (n.image) h += row('image', `<span class="image">${esc(n.image)}</span>`);
    if (n.zone) h += row('zone', `<span class="zone">${esc(n.zone)}</span>`);
    const ls = Object.entries(n.labels || {}).sort(([a], [b]) => (a < b ? -1 : 1));
    if (ls.length) {
      h += row('labels', '<ul class="labels">' + ls.map(([k, v]) =>
        `<li data-key="${esc(k)}"><span class="k">${esc(k)}</span>=<span class="v">${esc(v)}</span></li>`).join('') + '</ul>');
    }
    return h;
  }

  function edgeHTML(s, e) {
    const secs = seconds(s);
    const n = (id) => s.nodes.find((x) => x.id === id);
    let h = `<h2>${esc(e.source)} → ${esc(e.target)}</h2><div>${esc(e.protocol)}/${e.port} · last ${esc(s.window.name)}</div><table>`;
    h += row('bytes →', `<span id="bytes-fwd">${e.forward.bytes}</span> (${rate(e.forward.bytes / secs)})`, 'n');
    h += row('bytes ←', `<span id="bytes-rev">${e.reverse.bytes}</span> (${rate(e.reverse.bytes / secs)})`, 'n');
    h += row('packets →', `${e.forward.packets} (${per(e.forward.packets / secs)})`, 'n');
    h += row('packets ←', `${e.reverse.packets} (${per(e.reverse.packets / secs)})`, 'n');
    h += row('connections', `${e.connections} (${per(e.connections / secs)})`, 'n');
    h += row('RTT', e.rtt ? `${dur(e.rtt.mean_ns)} mean, ${dur(e.rtt.max_ns)} max, ${e.rtt.samples} handshakes` : '–', 'n');
    h += row('retransmits', `${e.forward.retransmits} → ${e.reverse.retransmits} ←`, 'n');
    h += row('first seen', esc(new Date(e.first_seen).toLocaleString()));
    h += row('last seen', esc(new Date(e.last_seen).toLocaleString()));
    h += '</table>';
    if (e.l7) {
      const l = e.l7, ratio = errorRatio(e);
      h += `<h3>${esc(l.protocol)}</h3><table>`;
      h += row('requests', `${l.requests} (${per(l.request_rate || 0)})`, 'n');
      h += row('errors', `${l.errors || 0} (${per(l.error_rate || 0)}, ${ratio == null ? '–' : (100 * ratio).toFixed(1) + '%'})`, 'n');
      if (l.latency) h += row('latency', `p50 ${dur(l.latency.p50_ns)}, p90 ${dur(l.latency.p90_ns)}, p99 ${dur(l.latency.p99_ns)}`, 'n');
      for (const k of ['methods', 'statuses', 'rcodes']) {
        if (l[k]) h += row(k, esc(Object.entries(l[k]).map(([a, b]) => a + ' ' + b).join(', ')));
      }
      h += '</table>';
    }
    const c = fm.diff && fm.diff.edges.find((x) => x.id === e.id);
    if (c) {
      h += `<h3>since ${esc(state.diff)} ago</h3><table>` + row('change', esc(c.changes.join(', '))) +
        row('rate', `${rate(c.rate_before)} → ${rate(c.rate_after)}`, 'n') +
        row('error ratio', `${(100 * c.error_ratio_before).toFixed(1)}% → ${(100 * c.error_ratio_after).toFixed(1)}%`, 'n') + '</table>';
    }
    h += `<h3>client</h3><table>${labels(n(e.source))}</table><h3>server</h3><table>${labels(n(e.target))}</table>`;
    return h + links(s) + queries(promql(s, e));
  }

  function nodeHTML(s, n) {
    const secs = seconds(s);
    let out = 0, inb = 0, peers = 0;
    for (const e of s.edges) {
      if (e.source === n.id) { out += edgeBytes(e); peers++; }
      if (e.target === n.id) { inb += edgeBytes(e); peers++; }
    }
    let h = `<h2>${esc(n.name || n.id)}</h2><div>${esc(n.id)}</div><table>${labels(n)}`;
    h += row('as client', `${bytes(out)} (${rate(out / secs)})`, 'n');
    h += row('as server', `${bytes(inb)} (${rate(inb / secs)})`, 'n');
    h += row('edges', String(peers), 'n');
    h += `</table><p><button type="button" data-focus="${esc(n.id)}">focus on it</button> and its neighbours</p>`;
    const side = (d) => `${d}_kind="${n.kind}",${d}_namespace="${n.namespace || ''}",${d}="${n.name}"`;
    return h + links(s) + queries([
      `sum by (dst) (rate(flowmap_flow_bytes_total{${side('src')}}[${s.window.name}]))`,
      `sum by (src) (rate(flowmap_flow_bytes_total{${side('dst')}}[${s.window.name}]))`,
    ]);
  }

  // refresh fetches the graph and draws it; calls overlapping one in flight
  // wait for it.
  function refresh() {
    if (inFlight) {
      // Again once it is done: the controls may have changed since it began.
      pending = pending || inFlight.then(() => { pending = null; return refresh(); });
      return pending;
    }
    inFlight = (async () => {
      const t0 = performance.now();
      try {
        const { snap, diff, rolled } = await fetchGraph();
        const t1 = performance.now();
        fm.snapshot = snap;
        fm.diff = diff;
        const key = snap.level + '|' + snap.window.name + '|' + state.focus + '|' + state.hops;
        const relayout = key !== drawnKey;
        fm.view = view(snap);
        const els = elements(fm.view, diff);
        const added = draw(els, relayout);
        drawnKey = key;
        matchSearch(false);
        await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
        const t2 = performance.now();
        const t = { fetch: t1 - t0, draw: t2 - t1, total: t2 - t0, nodes: fm.cy.nodes().length, edges: fm.cy.edges().length, added, relayout };
        if (relayout) fm.timings.layout = t; else fm.timings.refresh = t;
        if (!fm.ready) fm.timings.first = t;
        fm.refreshes++;
        fm.ready = true;
        $('banner').hidden = !rolled;
        if (rolled) {
          $('banner').textContent = `${rolled.nodes} nodes at the ${rolled.level} level are more than the ${cfg.max_nodes} this page draws: showing the ${snap.level} level.`;
        }
        fillLists(snap);
        showStatus(diff ? ` · ${diff.nodes.length + diff.edges.length} changes since ${state.diff} ago` : '');
        showDetails();
      } catch (err) {
        fm.errors.push(String(err));
        $('status').textContent = 'cannot get the graph: ' + err.message;
      } finally {
        inFlight = null;
      }
    })();
    return inFlight;
  }

  function fillLists(s) {
    const nss = [...new Set(s.nodes.map((n) => n.namespace).filter(Boolean))].sort();
    $('namespaces').innerHTML = nss.map((n) => `<option value="${esc(n)}">`).join('');
    if (s.nodes.length <= 5000) {
      $('names').innerHTML = s.nodes.map((n) => `<option value="${esc(n.name || n.id)}">`).join('');
    }
  }

  // matchSearch marks the nodes whose name, ID or address holds the search
  // and, if fit, zooms to them.
  function matchSearch(fit) {
    const cy = fm.cy, q = state.q.trim().toLowerCase();
    cy.nodes('.match').removeClass('match');
    if (!q || !fm.snapshot) return;
    const ids = new Set(fm.snapshot.nodes.filter((n) => (n.name || '').toLowerCase().includes(q) || n.id.toLowerCase().includes(q) ||
      (n.addrs || []).some((a) => a.toLowerCase().includes(q))).map((n) => n.id));
    const hit = cy.nodes().filter((n) => ids.has(n.id()));
    hit.addClass('match');
    if (fit && hit.length) cy.animate({ fit: { eles: hit, padding: 80 }, duration: 300 });
  }

  function bind() {
    const now = (k, v) => { set({ [k]: v }); refresh(); };
    for (const k of ['level', 'window', 'diff', 'proto']) $(k).onchange = () => now(k, $(k).value);
    for (const k of ['ns', 'port', 'min', 'hops']) $(k).onchange = () => now(k, $(k).value.trim());
    $('ext').onchange = () => now('ext', $('ext').checked ? '1' : '0');
    $('q').oninput = () => { set({ q: $('q').value }); matchSearch(true); };
    $('unfocus').onclick = () => now('focus', '');
    $('close').onclick = () => { set({ sel: '' }); showDetails(); };
    window.addEventListener('hashchange', () => { state = readHash(); syncControls(); refresh(); });
  }

  async function start() {
    try { cfg = Object.assign(cfg, await getJSON('config.json')); } catch (err) { fm.errors.push(String(err)); }
    fm.cy = makeCy(false);
    fm.big = false;
    syncControls();
    bind();
    await refresh();
    setInterval(refresh, cfg.refresh_ms);
  }
  fm.refresh = refresh;
  start();
})();
