/* mechscope viewer: the attribution-graph page (MS.attributionGraph). Plain DOM and SVG, no libraries.
 * Nodes sit in rows by layer (token embeddings at the bottom, then each layer, logits at the top) and in
 * columns by prompt position. Hovering a node shows its details and, for a latent, its dashboard (fetched
 * through opts.fetchNode); clicking pins it; shift-click (or "click selects") selects nodes, which "Group"
 * merges into one supernode whose edges are the sums of its members'. Pins and groups are kept in
 * localStorage under opts.storageKey. Every string from the graph reaches the page as text. */
(function (global) {
  'use strict';
  const MS = global.MS, el = MS.el, svg = MS.svg, fmt = MS.fmt;
  const str = (x) => (x === null || x === undefined ? '' : String(x));
  const num = (x) => { const n = Number(x); return Number.isFinite(n) ? n : 0; };
  const SLOT = 26, ROW = 74, LEFT = 70, TOP = 16, BOTTOM = 44, GAP = 14, DEFAULT_EDGES = 120, STEPS = 10000;
  const FILL = { error: '#c9ced6', token: '#cfe8cf', logit: '#fbd9a8' };

  // ---- layout: rows by layer, columns by position, nodes of one cell side by side ------------
  function layout(doc) {
    const nodes = (doc.nodes || []).map((n) => ({
      id: num(n.id), kind: str(n.kind), layer: n.layer === null || n.layer === undefined ? null : num(n.layer),
      pos: n.pos === null || n.pos === undefined ? null : num(n.pos), index: n.index, value: num(n.value),
      influence: typeof n.influence === 'number' ? n.influence : null, prob: n.prob, label: str(n.label), text: n.text,
    }));
    const tokens = Array.isArray(doc.tokens) ? doc.tokens : [];
    const nPos = Math.max(1, tokens.length, ...nodes.map((n) => (n.pos === null ? 0 : n.pos + 1)));
    const layers = [...new Set(nodes.filter((n) => n.kind === 'latent' || n.kind === 'error').map((n) => n.layer))]
      .sort((a, b) => a - b);
    const nRows = layers.length + 2;
    const rowOf = (n) => (n.kind === 'token' ? 0 : n.kind === 'logit' ? nRows - 1 : 1 + layers.indexOf(n.layer));
    const cells = new Map();
    const order = { latent: 0, error: 1, token: 0, logit: 0 };
    for (const n of nodes) {
      n.row = rowOf(n);
      n.col = Math.min(nPos - 1, Math.max(0, n.pos === null ? nPos - 1 : n.pos));
      const k = n.row + ':' + n.col;
      if (!cells.has(k)) cells.set(k, []);
      cells.get(k).push(n);
    }
    const width = new Array(nPos).fill(1);
    for (const list of cells.values()) {
      list.sort((a, b) => (order[a.kind] || 0) - (order[b.kind] || 0) || num(a.index) - num(b.index));
      width[list[0].col] = Math.max(width[list[0].col], list.length);
    }
    const colX = [];
    let x = LEFT;
    for (let c = 0; c < nPos; c++) { colX.push(x); x += width[c] * SLOT + GAP; }
    for (const list of cells.values()) {
      const c = list[0].col, off = (width[c] - list.length) * SLOT / 2;
      list.forEach((n, i) => { n.x = colX[c] + off + (i + 0.5) * SLOT; n.y = TOP + (nRows - 1 - n.row) * ROW + ROW / 2; });
    }
    const rowNames = ['embeddings', ...layers.map((l) => 'layer ' + l), 'logits'];
    const colText = [];
    for (let c = 0; c < nPos; c++) {
      const t = Array.isArray(doc.token_text) && doc.token_text[c] !== undefined ? doc.token_text[c] : tokens[c];
      colText.push(str(t));
    }
    return { nodes, nRows, nPos, colX, width, rowNames, colText, W: x + 10, H: TOP + nRows * ROW + BOTTOM };
  }

  // ---- pins and groups, validated against the graph when read back --------------------------
  function loadState(key, ids) {
    let s = null;
    try { s = JSON.parse(global.localStorage.getItem(key) || 'null'); } catch (e) { s = null; }
    const groups = [], used = new Set();
    for (const g of (s && Array.isArray(s.groups)) ? s.groups : []) {
      const members = (g && Array.isArray(g.members) ? g.members : []).filter((m) => ids.has(m) && !used.has(m));
      const name = str(g && g.name).slice(0, 80);
      if (members.length < 2 || !name || groups.some((o) => o.name === name)) continue;
      members.forEach((m) => used.add(m));
      groups.push({ name, members });
    }
    const valid = (p) => typeof p === 'string' && ((p.startsWith('n:') && ids.has(Number(p.slice(2)))) ||
      (p.startsWith('g:') && groups.some((g) => 'g:' + g.name === p)));
    const pins = [...new Set((s && Array.isArray(s.pins)) ? s.pins.filter(valid) : [])];
    return { groups, pins };
  }

  MS.attributionGraph = function (root, doc, opts) {
    const o = Object.assign({ fetchNode: null, storageKey: null }, opts || {});
    root.replaceChildren();
    const L = layout(doc);
    const byId = new Map(L.nodes.map((n) => [n.id, n]));
    const edges = (doc.edges || []).map((e) => ({ source: num(e.source), target: num(e.target), weight: num(e.weight) }))
      .filter((e) => byId.has(e.source) && byId.has(e.target));
    const st = o.storageKey ? loadState(o.storageKey, new Set(byId.keys())) : { groups: [], pins: [] };
    const selected = new Set();
    const save = () => {
      if (!o.storageKey) return;
      try { global.localStorage.setItem(o.storageKey, JSON.stringify({ pins: st.pins, groups: st.groups })); } catch (e) { /* storage off */ }
    };

    // scores and size scale
    const sc = doc.scores || {};
    root.appendChild(el('h3', { text: str(doc.name) + (doc.prompt ? ' — ' + str(doc.prompt) : '') }));
    root.appendChild(el('div', { class: 'small muted' }, [
      `${L.nodes.length} nodes, ${edges.length} edges kept; replacement ${fmt(sc.pruned_replacement)} (full ${fmt(sc.replacement)}), ` +
      `completeness ${fmt(sc.pruned_completeness)} (full ${fmt(sc.completeness)}); model ${str(doc.model)}.` +
      (doc.dashboards ? '' : ' No feature store: hovering a latent shows no dashboard.')]));
    // size and shade: influence (else |value|) against the largest among nodes of the same kind
    const mag = (m) => (m.influence !== null ? Math.abs(m.influence) : Math.abs(m.value));
    const top = new Map();
    for (const n of L.nodes) top.set(n.kind, Math.max(top.get(n.kind) || 1e-12, mag(n)));
    L.nodes.forEach((n) => { n.shade = Math.sqrt(mag(n) / top.get(n.kind)); n.r = 5 + 7 * n.shade; });

    // controls
    const ctl = el('div', { class: 'slider graph-controls' });
    const slider = el('input', { type: 'range', min: 0, max: STEPS, value: 0, step: 1, class: 'threshold graph-threshold' });
    const count = el('span', { class: 'edge-count' });
    const selMode = el('input', { type: 'checkbox', class: 'select-mode' });
    const groupBtn = el('button', { type: 'button', class: 'group-btn', text: 'Group selected' });
    const clearBtn = el('button', { type: 'button', class: 'clear-btn', text: 'Clear selection' });
    ctl.append(el('label', { text: 'hide |weight| below' }), slider, count,
      el('label', {}, [selMode, ' click selects']), groupBtn, clearBtn);
    root.appendChild(ctl);
    root.appendChild(el('div', { class: 'legend', text: 'Rows: embeddings (bottom), each layer, logits (top); columns: prompt positions. ' +
      'Node size: influence on the logits. Edges: blue adds, red subtracts; width ∝ |weight|. Hover: details; click: pin; ' +
      'shift-click: select for grouping.' }));
    const layoutRow = el('div', { class: 'row graph-layout' });
    const box = el('div', { class: 'graph-box', style: 'overflow:auto;max-width:100%;border:1px solid #d8dde4;border-radius:6px' });
    const side = el('div', { class: 'graph-side', style: 'min-width:300px;max-width:460px' });
    const pinsBox = el('div', { class: 'card graph-pins' });
    const groupsBox = el('div', { class: 'card graph-groups' });
    const detail = el('div', { class: 'card graph-detail' }, [el('p', { class: 'muted', text: 'Hover a node for its details.' })]);
    side.append(pinsBox, groupsBox, detail);
    layoutRow.append(box, side);
    root.appendChild(layoutRow);
    MS.wireTips(box);

    // at most the strongest DEFAULT_EDGES are shown at first
    const maxAbs0 = Math.max(1e-12, ...edges.map((e) => Math.abs(e.weight)));
    if (edges.length > DEFAULT_EDGES) {
      const w = edges.map((e) => Math.abs(e.weight)).sort((a, b) => b - a)[DEFAULT_EDGES - 1];
      slider.value = String(Math.min(STEPS, Math.ceil(STEPS * w / maxAbs0)));
    }

    // the view: nodes outside groups, one supernode per group, edges summed between them
    function view() {
      const owner = new Map();
      for (const g of st.groups) for (const m of g.members) owner.set(m, 'g:' + g.name);
      const vnodes = new Map();
      for (const n of L.nodes) if (!owner.has(n.id)) vnodes.set('n:' + n.id, { key: 'n:' + n.id, x: n.x, y: n.y, r: n.r, node: n, label: n.label });
      for (const g of st.groups) {
        const ms = g.members.map((m) => byId.get(m));
        vnodes.set('g:' + g.name, { key: 'g:' + g.name, x: ms.reduce((s, m) => s + m.x, 0) / ms.length,
          y: ms.reduce((s, m) => s + m.y, 0) / ms.length, r: 13, group: g, label: g.name });
      }
      const sums = new Map();
      for (const e of edges) {
        const a = owner.get(e.source) || 'n:' + e.source, b = owner.get(e.target) || 'n:' + e.target;
        if (a === b) continue;
        const k = a + '>' + b;
        sums.set(k, (sums.get(k) || 0) + e.weight);
      }
      const vedges = [...sums].map(([k, w]) => { const [a, b] = k.split('>'); return { a, b, w }; });
      return { vnodes, vedges, owner };
    }

    function drawNode(g, v, pinned) {
      const cls = ['node', v.group ? 'supernode' : 'kind-' + v.node.kind];
      if (pinned) cls.push('pinned');
      if (selected.has(v.key)) cls.push('selected');
      const attrs = { class: cls.join(' '), 'data-key': v.key, 'data-tip': v.group ? `${v.label} (${v.group.members.length} nodes)` : v.label, cursor: 'pointer' };
      if (v.node) attrs['data-node'] = String(v.node.id);
      const node = svg('g', attrs);
      const stroke = pinned ? '#e08a00' : '#555', sw = pinned ? 3 : 1, dash = selected.has(v.key) ? '3,2' : null;
      if (v.group) {
        node.appendChild(svg('rect', { x: v.x - 30, y: v.y - 11, width: 60, height: 22, rx: 9, fill: '#ead9f5', stroke, 'stroke-width': sw, 'stroke-dasharray': dash }));
        node.appendChild(svg('text', { x: v.x, y: v.y + 4, 'font-size': 10, 'text-anchor': 'middle' }, v.label.length > 10 ? v.label.slice(0, 9) + '…' : v.label));
      } else if (v.node.kind === 'latent') {
        node.appendChild(svg('circle', { cx: v.x, cy: v.y, r: v.r, fill: MS.seq(0.2 + 0.8 * v.node.shade), stroke, 'stroke-width': sw, 'stroke-dasharray': dash }));
      } else {
        const s = v.node.kind === 'error' ? v.r * 1.6 : 18;
        node.appendChild(svg('rect', { x: v.x - s / 2, y: v.y - s / 2, width: s, height: s, rx: v.node.kind === 'logit' ? 5 : 2,
          fill: FILL[v.node.kind] || '#eee', stroke, 'stroke-width': sw, 'stroke-dasharray': dash }));
      }
      g.appendChild(node);
    }

    function draw() {
      const { vnodes, vedges } = view();
      const pins = new Set(st.pins);
      const maxAbs = Math.max(1e-12, ...vedges.map((e) => Math.abs(e.w)));
      const thr = (Number(slider.value) / STEPS) * maxAbs;
      const shown = vedges.filter((e) => Math.abs(e.w) >= thr || pins.has(e.a) || pins.has(e.b));
      const g = svg('svg', { class: 'attribution-graph', width: L.W, height: L.H, viewBox: `0 0 ${L.W} ${L.H}` });
      L.rowNames.forEach((name, r) => g.appendChild(svg('text', { class: 'row-label', x: 6, y: TOP + (L.nRows - 1 - r) * ROW + ROW / 2 + 4, 'font-size': 11, fill: '#5f6b7a' }, name)));
      L.colText.forEach((t, c) => {
        const cx = L.colX[c] + L.width[c] * SLOT / 2;
        g.appendChild(svg('text', { class: 'col-label', x: cx, y: L.H - BOTTOM + 18, 'font-size': 11, 'text-anchor': 'middle', 'data-tip': `position ${c}: ${t}` }, t.length > 12 ? t.slice(0, 11) + '…' : t));
        g.appendChild(svg('text', { x: cx, y: L.H - BOTTOM + 32, 'font-size': 9, 'text-anchor': 'middle', fill: '#999' }, String(c)));
      });
      shown.sort((x, y) => Math.abs(x.w) - Math.abs(y.w));
      for (const e of shown) {
        const a = vnodes.get(e.a), b = vnodes.get(e.b);
        const hl = pins.has(e.a) || pins.has(e.b), my = (a.y + b.y) / 2;
        g.appendChild(svg('path', { class: 'edge' + (hl ? ' hl' : ''), d: `M${a.x},${a.y} C${a.x},${my} ${b.x},${my} ${b.x},${b.y}`,
          fill: 'none', stroke: e.w >= 0 ? '#2166ac' : '#b2182b', 'stroke-width': (0.6 + 5 * Math.abs(e.w) / maxAbs).toFixed(2),
          opacity: hl ? 0.95 : (pins.size ? 0.2 : 0.55), 'data-tip': `${a.label} → ${b.label}: ${fmt(e.w, 4)}` }));
      }
      for (const v of vnodes.values()) drawNode(g, v, pins.has(v.key));
      box.replaceChildren(g);
      count.textContent = `${shown.length} of ${vedges.length} edges (threshold ${fmt(thr, 4)})`;
      root.setAttribute('data-nodes', String(vnodes.size));
      root.setAttribute('data-edges', String(shown.length));
      groupBtn.disabled = selected.size < 2;
      groupBtn.textContent = `Group selected (${selected.size})`;
      lists(vnodes);
    }

    function lists(vnodes) {
      pinsBox.replaceChildren(el('h3', { text: `Pinned (${st.pins.length})` }));
      if (!st.pins.length) pinsBox.appendChild(el('p', { class: 'small muted', text: 'Click a node to pin it.' }));
      for (const p of st.pins) {
        const v = vnodes.get(p);
        const label = v ? v.label : p;
        pinsBox.appendChild(el('div', { class: 'pin small', 'data-key': p }, [label + ' ',
          el('button', { type: 'button', class: 'unpin', text: 'unpin', onclick: () => { toggle(st.pins, p); save(); draw(); } })]));
      }
      groupsBox.replaceChildren(el('h3', { text: `Supernodes (${st.groups.length})` }));
      if (!st.groups.length) groupsBox.appendChild(el('p', { class: 'small muted', text: 'Select nodes (shift-click), then Group.' }));
      for (const g of st.groups) {
        groupsBox.appendChild(el('div', { class: 'group small', 'data-group': g.name }, [
          `${g.name}: ${g.members.map((m) => byId.get(m).label).join(', ')} `,
          el('button', { type: 'button', class: 'ungroup', text: 'ungroup', onclick: () => ungroup(g.name) })]));
      }
    }

    function toggle(list, x) { const i = list.indexOf(x); if (i >= 0) list.splice(i, 1); else list.push(x); }

    function group() {
      const members = [];
      for (const k of selected) {
        if (k.startsWith('n:')) members.push(Number(k.slice(2)));
        else { const g = st.groups.find((x) => 'g:' + x.name === k); if (g) { members.push(...g.members); ungroup(g.name, true); } }
      }
      if (members.length < 2) return;
      let i = st.groups.length + 1;
      while (st.groups.some((g) => g.name === 'group ' + i)) i++;
      st.groups.push({ name: 'group ' + i, members });
      st.pins = st.pins.filter((p) => !selected.has(p));
      selected.clear();
      save(); draw();
    }

    function ungroup(name, quiet) {
      st.groups = st.groups.filter((g) => g.name !== name);
      st.pins = st.pins.filter((p) => p !== 'g:' + name);
      selected.delete('g:' + name);
      if (!quiet) { save(); draw(); }
    }

    groupBtn.addEventListener('click', group);
    clearBtn.addEventListener('click', () => { selected.clear(); draw(); });
    slider.addEventListener('input', draw);
    box.addEventListener('click', (evt) => {
      const t = evt.target.closest ? evt.target.closest('g.node') : null;
      if (!t) return;
      const key = t.getAttribute('data-key');
      if (evt.shiftKey || evt.ctrlKey || evt.metaKey || selMode.checked) { if (selected.has(key)) selected.delete(key); else selected.add(key); }
      else { toggle(st.pins, key); save(); }
      draw();
    });
    let hovered = null;
    box.addEventListener('mouseover', (evt) => {
      const t = evt.target.closest ? evt.target.closest('g.node') : null;
      if (!t || t.getAttribute('data-key') === hovered) return;
      hovered = t.getAttribute('data-key');
      showDetail(hovered);
    });

    // ---- details of the hovered node -------------------------------------------------------
    const cache = new Map();
    function edgeList(title, list, other) {
      const box2 = el('div', { class: 'small' }, [el('b', { text: title })]);
      if (!list.length) box2.appendChild(el('div', { class: 'muted', text: 'none' }));
      for (const e of list) box2.appendChild(el('div', { text: `${fmt(e.weight, 4)}  ${byId.get(other(e)).label}` }));
      return box2;
    }
    function showDetail(key) {
      const { vnodes, owner } = view();
      const v = vnodes.get(key);
      if (!v) return;
      detail.replaceChildren();
      detail.setAttribute('data-key', key);
      const strongest = (es) => es.sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, 6);
      if (v.group) {
        const ids = new Set(v.group.members);
        detail.appendChild(el('h3', { text: `${v.group.name} (supernode of ${ids.size})` }));
        for (const m of v.group.members) detail.appendChild(el('div', { class: 'small', text: byId.get(m).label }));
        detail.appendChild(edgeList('strongest inputs from outside', strongest(edges.filter((e) => ids.has(e.target) && !ids.has(e.source))), (e) => e.source));
        detail.appendChild(edgeList('strongest outputs to outside', strongest(edges.filter((e) => ids.has(e.source) && !ids.has(e.target))), (e) => e.target));
        return;
      }
      const n = v.node;
      detail.appendChild(el('h3', { class: 'node-title', text: n.label }));
      const rows = [['kind', n.kind], ['layer', n.layer === null ? '—' : n.layer], ['position', n.pos === null ? '—' : `${n.pos} (${L.colText[n.pos] || ''})`],
        ['index', str(n.index)], [n.kind === 'latent' ? 'activation' : n.kind === 'logit' ? 'logit' : 'norm', fmt(n.value, 4)]];
      if (n.prob !== undefined && n.prob !== null) rows.push(['probability', fmt(num(n.prob), 4)]);
      if (n.influence !== null) rows.push(['influence', fmt(n.influence, 4)]);
      if (owner.has(n.id)) rows.push(['in supernode', owner.get(n.id).slice(2)]);
      detail.appendChild(MS.kvTable(rows));
      detail.appendChild(edgeList('strongest inputs', strongest(edges.filter((e) => e.target === n.id)), (e) => e.source));
      detail.appendChild(edgeList('strongest outputs', strongest(edges.filter((e) => e.source === n.id)), (e) => e.target));
      if (n.kind !== 'latent' || !o.fetchNode) return;
      const dash = el('div', { class: 'graph-dashboard' }, [el('p', { class: 'muted', text: 'Loading dashboard…' })]);
      detail.appendChild(dash);
      if (!cache.has(n.id)) cache.set(n.id, o.fetchNode(n.id));
      cache.get(n.id).then((d) => { if (hovered === key) dashboard(dash, d); },
        (err) => { cache.delete(n.id); if (hovered === key) dash.replaceChildren(el('div', { class: 'err', text: String(err && err.message ? err.message : err) })); });
    }

    function dashboard(dash, d) {
      dash.replaceChildren();
      const p = d && d.dashboard;
      if (!p) { dash.appendChild(el('p', { class: 'muted no-dashboard', text: str(d && d.note) || 'no dashboard' })); return; }
      dash.setAttribute('data-feature', str(p.feature));
      dash.appendChild(el('h3', { class: 'dashboard-title', text: `${str(d.feature_set)} / feature ${str(p.feature)}${p.label ? ' (' + str(p.label) + ')' : ''}` }));
      const ex = (p.explanations || [])[0];
      dash.appendChild(el('div', { class: 'explanation' + (ex ? '' : ' muted'), text: ex ? `${str(ex.explanation)} (corr ${fmt(ex.corr)})` : 'no stored explanation' }));
      dash.appendChild(MS.kvTable([['density', fmt(p.density, 4)], ['max', fmt(p.max_act, 4)]]));
      const top = (p.top || []).slice(0, 5);
      const scale = Math.max(1e-9, Math.abs(num(p.max_act)), ...[].concat(...top.map((e) => (e.acts || []).map((a) => Math.abs(num(a))))));
      const exBox = el('div', { class: 'examples-top' });
      for (const e of top) exBox.appendChild(MS.tokenLine(e, scale));
      dash.appendChild(el('div', { class: 'small', text: `Top examples (${(p.top || []).length})` }));
      dash.appendChild(exBox);
    }

    draw();
  };
})(window);
