/* mechscope renderers: plain DOM and hand-written SVG, no libraries, no network.
 * Shared by the local viewer (app.js) and the self-contained report (report.js).
 * Every renderer takes (element, data[, options]) and fills the element. */
(function (global) {
  'use strict';
  const MS = {};

  // ---- small helpers ---------------------------------------------------------------------
  // Every string from an artifact reaches the page through textContent or setAttribute (here and
  // in `svg`), never through the HTML parser: no renderer builds markup text.
  // links the renderers make stay inside the page: anything but '#...' becomes '#'
  const inPageLink = (v) => { const t = String(v); return t.charAt(0) === '#' ? t : '#'; };
  MS.inPageLink = inPageLink;

  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'text') e.textContent = String(v);
      else if (k.startsWith('on')) { if (typeof v === 'function') e.addEventListener(k.slice(2), v); }
      else if (k === 'href') e.setAttribute(k, inPageLink(v));
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of [].concat(children || [])) {
      if (c === null || c === undefined) continue;
      e.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  MS.el = el;

  // an SVG element: attributes set one by one, text as a text node
  const SVGNS = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || k.startsWith('on') || k === 'href') continue;
      e.setAttribute(k, String(v));
    }
    if (text !== null && text !== undefined) e.textContent = String(text);
    return e;
  }
  MS.svg = svg;
  function svgRoot(cls, W, H) { return svg('svg', { class: cls, width: W, height: H, viewBox: `0 0 ${W} ${H}` }); }

  // a count read from an artifact: a non-negative integer, or 0
  const count = (x) => { const n = Number(x); return Number.isFinite(n) && n > 0 ? Math.floor(n) : 0; };
  const str = (x) => (x === null || x === undefined ? '' : String(x));

  function fmt(x, digits) {
    if (x === null || x === undefined || (typeof x === 'number' && !isFinite(x))) return '—';
    if (typeof x !== 'number') return String(x);
    const d = digits === undefined ? 3 : digits;
    if (x !== 0 && (Math.abs(x) >= 1e5 || Math.abs(x) < 1e-3)) return x.toExponential(2);
    return Number(x.toFixed(d)).toString();
  }
  MS.fmt = fmt;

  function intfmt(n) { return (n === null || n === undefined) ? '—' : Number(n).toLocaleString('en-US'); }

  // one shared tooltip
  let tip = null;
  function showTip(text, evt) {
    if (!tip) {
      tip = el('div', { class: 'ms-tooltip', id: 'ms-tooltip', style: 'position:fixed;pointer-events:none;background:#1d232b;color:#fff;padding:3px 7px;border-radius:4px;font-size:12px;z-index:1000;white-space:pre;display:none' });
      document.body.appendChild(tip);
    }
    tip.textContent = text;
    tip.style.display = 'block';
    tip.style.left = (evt.clientX + 12) + 'px';
    tip.style.top = (evt.clientY + 12) + 'px';
  }
  function hideTip() { if (tip) tip.style.display = 'none'; }
  MS.showTip = showTip; MS.hideTip = hideTip;

  // colour scales
  function seq(v) { // 0..1 -> white .. deep blue
    const t = Math.max(0, Math.min(1, Number(v) || 0));
    const r = Math.round(255 - t * (255 - 8)), g = Math.round(255 - t * (255 - 48)), b = Math.round(255 - t * (255 - 107));
    return `rgb(${r},${g},${b})`;
  }
  function div(v) { // -1..1 -> red .. white .. blue
    if (typeof v !== 'number' || !isFinite(v)) return '#e8e8e8';
    const t = Math.max(-1, Math.min(1, v));
    const [r0, g0, b0] = t >= 0 ? [33, 102, 172] : [178, 24, 43];
    const a = Math.abs(t);
    return `rgb(${Math.round(255 + a * (r0 - 255))},${Math.round(255 + a * (g0 - 255))},${Math.round(255 + a * (b0 - 255))})`;
  }
  MS.seq = seq; MS.div = div;

  function kvTable(rows) {
    const t = el('table', { class: 'kv' });
    for (const [k, v] of rows) t.appendChild(el('tr', {}, [el('th', { text: k }), el('td', {}, [v instanceof Node ? v : String(v)])]));
    return t;
  }
  MS.kvTable = kvTable;

  function specText(s) {
    if (s === null || s === undefined) return 'unspecified';
    if (typeof s === 'string') return s;
    return Object.entries(s).filter(([, v]) => v !== null && v !== undefined).map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : v}`).join(', ');
  }
  MS.specText = specText;

  // hover tooltips for every element carrying data-tip inside `root`
  function wireTips(root) {
    root.addEventListener('mousemove', (evt) => {
      const t = evt.target.closest ? evt.target.closest('[data-tip]') : null;
      if (t && root.contains(t)) showTip(t.getAttribute('data-tip'), evt); else hideTip();
    });
    root.addEventListener('mouseleave', hideTip);
  }

  // ---- overview --------------------------------------------------------------------------
  MS.overview = function (root, ov, summary) {
    root.replaceChildren();
    if (!ov) { root.appendChild(el('p', { class: 'muted', text: 'No overview.json for this model.' })); return; }
    root.appendChild(kvTable([
      ['name', ov.name], ['architecture', ov.architecture], ['layers', ov.n_layers], ['heads per layer', ov.n_heads],
      ['d_model', ov.d_model], ['vocabulary', intfmt(ov.vocab)], ['sites', intfmt(ov.sites)], ['parameters', intfmt(ov.params)],
    ]));
    const notes = ov.notes || {};
    if (Object.keys(notes).length) {
      root.appendChild(el('h3', { text: 'Notes' }));
      root.appendChild(kvTable(Object.entries(notes).map(([k, v]) => [k, typeof v === 'object' ? JSON.stringify(v) : v])));
    }
    if (summary) {
      const have = [];
      for (const k of ['attention', 'head_roles', 'training', 'features']) if (summary[k]) have.push(k.replace('_', ' '));
      if ((summary.patching || []).length) have.push(`patching (${summary.patching.length})`);
      if ((summary.circuits || []).length) have.push(`circuits (${summary.circuits.length})`);
      if ((summary.vision || []).length) have.push(`vision (${summary.vision.length})`);
      root.appendChild(el('p', {}, ['Artifacts: ', ...have.map((h) => el('span', { class: 'pill', text: h }))]));
    }
  };

  // ---- generic heatmap (SVG) -------------------------------------------------------------
  MS.heatmap = function (root, hm, opts) {
    const o = Object.assign({ cell: 30, diverging: false, maxAbs: null, title: '', label: 'value' }, opts || {});
    const rows = hm.rows.map(str), cols = hm.cols.map(str), vals = hm.values;
    const flat = [].concat(...vals).filter((v) => typeof v === 'number' && isFinite(v));
    const maxAbs = o.maxAbs || Math.max(1e-9, ...flat.map(Math.abs));
    const maxV = Math.max(1e-9, ...flat);
    const lw = Math.min(170, 8 + 7 * Math.max(...rows.map((r) => r.length), 1));
    const th = Math.min(120, 10 + 6 * Math.max(...cols.map((c) => c.length), 1));
    const cw = Math.max(14, Math.min(o.cell, Math.floor(900 / Math.max(1, cols.length))));
    const ch = Math.max(14, o.cell);
    const W = lw + cols.length * cw + 70, H = th + rows.length * ch + 10;
    const g = svgRoot('heatmap', W, H);
    cols.forEach((c, j) => {
      const x = lw + j * cw + cw / 2;
      g.appendChild(svg('text', { x, y: th - 4, 'font-size': 11, transform: `rotate(-55 ${x} ${th - 4})` }, c));
    });
    rows.forEach((r, i) => {
      const y = th + i * ch;
      g.appendChild(svg('text', { x: lw - 6, y: y + ch / 2 + 4, 'font-size': 11, 'text-anchor': 'end' }, r));
      cols.forEach((c, j) => {
        const v = (vals[i] || [])[j];
        const fill = o.diverging ? div(v === null ? null : v / maxAbs) : (v === null ? '#e8e8e8' : seq(v / maxV));
        g.appendChild(svg('rect', { class: 'hm-cell', x: lw + j * cw, y, width: cw - 1, height: ch - 1, fill,
          'data-tip': `${r} / ${c}: ${fmt(v, 4)}` }));
      });
    });
    // colour bar
    const bx = lw + cols.length * cw + 16, bh = Math.max(40, rows.length * ch);
    for (let k = 0; k < 20; k++) {
      const t = 1 - k / 19;
      g.appendChild(svg('rect', { x: bx, y: th + k * bh / 20, width: 12, height: bh / 20 + 0.5, fill: o.diverging ? div(2 * t - 1) : seq(t) }));
    }
    g.appendChild(svg('text', { x: bx + 16, y: th + 9, 'font-size': 10 }, fmt(o.diverging ? maxAbs : maxV)));
    g.appendChild(svg('text', { x: bx + 16, y: th + bh, 'font-size': 10 }, o.diverging ? fmt(-maxAbs) : '0'));
    const wrap = el('div', { class: 'hm-wrap' });
    if (o.title) wrap.appendChild(el('h3', { text: o.title }));
    const box = el('div', {}, [g]);
    wireTips(box);
    wrap.appendChild(box);
    root.appendChild(wrap);
    return wrap;
  };

  // ---- attention patterns ----------------------------------------------------------------
  function drawThumb(canvas, pat) {
    const n = pat.length, ctx = canvas.getContext('2d');
    const size = canvas.width, c = size / n;
    ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, size, size);
    for (let q = 0; q < n; q++) for (let k = 0; k < n; k++) {
      const v = pat[q][k]; if (!v) continue;
      ctx.fillStyle = seq(v); ctx.fillRect(k * c, q * c, Math.ceil(c), Math.ceil(c));
    }
  }

  MS.attention = function (root, att, opts) {
    root.replaceChildren();
    if (!att) { root.appendChild(el('p', { class: 'muted', text: 'No attention.json for this model.' })); return; }
    const o = Object.assign({ idPrefix: 'attn' }, opts || {});
    // sizes are read off the arrays themselves, not taken from the file's own counts
    const toks = att.tokens.map(str), L = att.patterns.length, H = L ? att.patterns[0].length : 0;
    if (att.prompt) root.appendChild(el('p', { class: 'muted' }, ['Prompt: ', str(att.prompt)]));
    root.appendChild(el('p', { class: 'small muted', text: `${L} layers × ${H} heads, ${toks.length} tokens. Click a head to open its pattern; hover tokens or cells.` }));
    const row = el('div', { class: 'row' });
    const grid = el('div', { class: 'grid-heads', id: o.idPrefix + '-grid', style: `grid-template-columns: 40px repeat(${H}, 68px)` });
    grid.appendChild(el('div', {}));
    for (let h = 0; h < H; h++) grid.appendChild(el('div', { class: 'small muted', style: 'text-align:center', text: `H${h}` }));
    const detail = el('div', { class: 'card attn-detail', id: o.idPrefix + '-detail' });
    const cells = [];
    for (let l = 0; l < L; l++) {
      grid.appendChild(el('div', { class: 'small muted', style: 'align-self:center', text: `L${l}` }));
      for (let h = 0; h < H; h++) {
        const cv = el('canvas', { width: 64, height: 64 });
        drawThumb(cv, att.patterns[l][h]);
        const cell = el('div', { class: 'cell head-cell', 'data-head': `${l}.${h}`, title: `layer ${l}, head ${h}`, role: 'button' }, [cv]);
        cell.addEventListener('click', () => select(l, h));
        cells.push(cell);
        grid.appendChild(cell);
      }
    }
    row.appendChild(grid); row.appendChild(detail); root.appendChild(row);

    function select(l, h) {
      if (!(Number.isInteger(l) && Number.isInteger(h) && l >= 0 && l < L && h >= 0 && h < H)) return;
      cells.forEach((c) => c.classList.toggle('selected', c.getAttribute('data-head') === `${l}.${h}`));
      detail.setAttribute('data-head', `${l}.${h}`);
      detail.replaceChildren();
      detail.appendChild(el('h3', { class: 'attn-title', text: `Layer ${l}, head ${h}` }));
      const pat = att.patterns[l][h], n = toks.length;
      const cs = Math.max(10, Math.min(26, Math.floor(560 / n)));
      const lw = Math.min(90, 10 + 7 * Math.max(...toks.map((t) => t.length)));
      const W = lw + n * cs + 10, Ht = lw + n * cs + 10;
      const g = svgRoot('attn-matrix', W, Ht);
      toks.forEach((t, i) => {
        const x = lw + i * cs + cs / 2;
        g.appendChild(svg('text', { class: 'ktok', 'data-k': i, x, y: lw - 4, 'font-size': 11, transform: `rotate(-60 ${x} ${lw - 4})` }, t));
        g.appendChild(svg('text', { class: 'qtok', 'data-q': i, x: lw - 4, y: lw + i * cs + cs / 2 + 4, 'font-size': 11, 'text-anchor': 'end' }, t));
      });
      for (let q = 0; q < n; q++) for (let k = 0; k < n; k++) {
        g.appendChild(svg('rect', { x: lw + k * cs, y: lw + q * cs, width: cs - 1, height: cs - 1, fill: seq(pat[q][k]),
          'data-tip': `${toks[q]} (${q}) → ${toks[k]} (${k}): ${fmt(pat[q][k], 4)}` }));
      }
      const box = el('div', {}, [g]);
      wireTips(box);
      detail.appendChild(el('div', { class: 'small muted', text: 'rows: query positions, columns: key positions' }));
      detail.appendChild(box);
      // token strip: hovering a token colours the others by the attention it pays them
      detail.appendChild(el('div', { class: 'small muted', text: 'Hover a token: the others are shaded by how much it attends to them.' }));
      const strip = el('div', { class: 'tokens attn-tokens' });
      const spans = toks.map((t, i) => el('span', { class: 'tok', 'data-pos': i, text: t }));
      spans.forEach((sp, q) => {
        sp.addEventListener('mouseenter', (evt) => {
          spans.forEach((o2, k) => { o2.style.background = seq(pat[q][k]); o2.style.color = pat[q][k] > 0.6 ? '#fff' : ''; o2.classList.toggle('focus', k === q); });
          showTip(`query ${q} (${toks[q]}): top key ${argmax(pat[q])} (${fmt(Math.max(...pat[q]), 3)})`, evt);
        });
        sp.addEventListener('mouseleave', () => { spans.forEach((o2) => { o2.style.background = ''; o2.style.color = ''; o2.classList.remove('focus'); }); hideTip(); });
        strip.appendChild(sp);
      });
      detail.appendChild(strip);
    }
    if (L && H) select(0, 0);
    return { select };
  };
  function argmax(a) { let b = 0; for (let i = 1; i < a.length; i++) if (a[i] > a[b]) b = i; return b; }

  // ---- head roles ------------------------------------------------------------------------
  MS.headRoles = function (root, hr) {
    root.replaceChildren();
    if (!hr) { root.appendChild(el('p', { class: 'muted', text: 'No head_roles.json for this model.' })); return; }
    const first = Object.values(hr.roles)[0] || [];  // (layer, head): the labels follow the matrices
    const rows = first.map((_, l) => `L${l}`), cols = (first[0] || []).map((_, h) => `H${h}`);
    const probe = hr.probe || {};
    if (Object.keys(probe).length) root.appendChild(el('p', { class: 'small muted', text: 'Probe: ' + specText(probe) }));
    const row = el('div', { class: 'row roles' });
    for (const [role, m] of Object.entries(hr.roles)) {
      const c = el('div', { class: 'card role', 'data-role': role });
      MS.heatmap(c, { rows, cols, values: m }, { title: role.replace(/_/g, ' '), cell: 28, maxAbs: 1 });
      row.appendChild(c);
    }
    root.appendChild(row);
    if (hr.causal) {
      const c = el('div', { class: 'card causal' });
      MS.heatmap(c, { rows, cols, values: hr.causal.values }, { title: 'Causal check: ' + str(hr.causal.metric), diverging: true, cell: 28 });
      c.appendChild(el('div', { class: 'spec', text: 'ablation: ' + specText(hr.causal.ablation) }));
      root.appendChild(c);
    }
  };

  // ---- patching --------------------------------------------------------------------------
  MS.patching = function (root, p) {
    root.replaceChildren();
    root.appendChild(el('h3', { text: p.title || p.name }));
    root.appendChild(el('div', {}, [el('span', { class: 'spec', text: `metric: ${str(p.metric)}${p.normalised ? ' (normalised: share of the effect restored)' : ''}` })]));
    root.appendChild(el('div', {}, [el('span', { class: 'spec', text: 'ablation: ' + specText(p.ablation) })]));
    MS.heatmap(root, p, { diverging: true, cell: 26 });
    if (p.how && Object.keys(p.how).length) root.appendChild(el('details', {}, [el('summary', { text: 'how it was measured' }), el('pre', { class: 'spec', text: JSON.stringify(p.how, null, 1) })]));
  };

  // ---- circuit graph ---------------------------------------------------------------------
  function circuitLayout(c) {
    const nodes = c.nodes.map((n) => ({ id: str(n.id), type: str(n.type), layer: Number(n.layer), head: Number(n.head) }));
    const layers = nodes.map((n) => n.layer);
    const Lmin = Math.min(-1, ...layers), Lmax = Math.max(...layers, 0);
    const nHeads = Math.max(1, ...nodes.filter((n) => n.type === 'head').map((n) => n.head + 1));
    const rowKey = (n) => n.type === 'input' ? 0 : n.type === 'output' ? 2 * (Lmax - Lmin) + 1 : 2 * (n.layer - Lmin) - 1 + (n.type === 'mlp' ? 1 : 0);
    const keys = [...new Set(nodes.map(rowKey))].sort((a, b) => a - b);  // only rows that hold nodes
    const nRows = keys.length;
    const W = Math.max(420, 90 * nHeads + 120), rowH = 90, H = nRows * rowH + 10;
    for (const n of nodes) {
      n.row = keys.indexOf(rowKey(n));
      n.y = H - 30 - n.row * rowH;
      n.x = n.type === 'head' ? 60 + (n.head + 0.5) * (W - 120) / nHeads : W / 2;
    }
    return { nodes, W, H };
  }

  MS.circuit = function (root, c, opts) {
    root.replaceChildren();
    const o = Object.assign({ idPrefix: 'circuit' }, opts || {});
    root.appendChild(el('h3', { text: str(c.name) + ' — ' + str(c.method) }));
    root.appendChild(el('div', {}, [el('span', { class: 'spec', text: 'ablation: ' + specText(c.ablation) })]));
    if (c.faithfulness) {
      const f = c.faithfulness;
      const ci = f.ci ? ` [${fmt(f.ci[0])}, ${fmt(f.ci[1])}] ${Math.round((Number(f.confidence) || 0.95) * 100)}% CI` : '';
      root.appendChild(el('div', { class: 'faith' }, [el('span', { class: 'spec', text: `${str(f.metric)} = ${fmt(f.value)}${ci}; ${str(f.aggregation)}; ${str(f.dataset)} n=${str(f.n)}` })]));
    }
    const { nodes, W, H } = circuitLayout(c);
    const byId = new Map(nodes.map((n) => [n.id, n]));
    const edges = c.edges.map((e) => ({ source: str(e.source), target: str(e.target), via: str(e.via),
      score: typeof e.score === 'number' && isFinite(e.score) ? e.score : null }));
    const maxAbs = Math.max(1e-12, ...edges.filter((e) => e.score !== null).map((e) => Math.abs(e.score)));
    const ctl = el('div', { class: 'slider' });
    const slider = el('input', { type: 'range', min: 0, max: 1000, value: 0, step: 1, class: 'threshold', id: o.idPrefix + '-threshold' });
    const label = el('span', { class: 'edge-count' });
    ctl.appendChild(el('label', { text: 'prune |score| below' }));
    ctl.appendChild(slider);
    ctl.appendChild(label);
    root.appendChild(ctl);
    root.appendChild(el('div', { class: 'legend', text: 'blue: positive score, red: negative; width ∝ |score|. Layers run bottom (input) to top (output).' }));
    const box = el('div', { class: 'circuit-graph' });
    root.appendChild(box);
    wireTips(box);

    function draw() {
      const thr = (Number(slider.value) / 1000) * maxAbs;
      const keep = edges.filter((e) => e.score === null || Math.abs(e.score) >= thr);
      const used = new Set();
      keep.forEach((e) => { used.add(e.source); used.add(e.target); });
      const g = svgRoot('circuit', W, H);
      const sorted = keep.slice().sort((a, b) => Math.abs(a.score || 0) - Math.abs(b.score || 0));
      for (const e of sorted) {
        const a = byId.get(e.source), b = byId.get(e.target);
        if (!a || !b) continue;
        const sc = e.score;
        const w = sc === null ? 1.5 : 0.6 + 5 * Math.abs(sc) / maxAbs;
        const col = sc === null ? '#888' : sc >= 0 ? '#2166ac' : '#b2182b';
        const dx = e.via === 'q' ? -8 : e.via === 'k' ? 0 : e.via === 'v' ? 8 : 0;
        const y1 = a.y - 12, y2 = b.y + 12, my = (y1 + y2) / 2;
        g.appendChild(svg('path', { class: 'edge', d: `M${a.x},${y1} C${a.x},${my} ${b.x + dx},${my} ${b.x + dx},${y2}`,
          stroke: col, 'stroke-width': w.toFixed(2), fill: 'none', opacity: 0.75,
          'data-tip': `${e.source} → ${e.target}${e.via ? ' (' + e.via + ')' : ''}: ${fmt(sc, 4)}` }));
      }
      for (const n of nodes) {
        const on = used.has(n.id);
        const fill = n.type === 'head' ? '#fdf1d8' : n.type === 'mlp' ? '#e4f2e4' : '#e8e8f4';
        const wdt = n.type === 'head' ? 46 : 64;
        const node = svg('g', { class: 'node' + (on ? '' : ' pruned'), 'data-node': n.id, opacity: on ? 1 : 0.3,
          'data-tip': `${n.id} (${n.type}${n.layer >= 0 && n.type !== 'output' ? ', layer ' + n.layer : ''})` });
        node.appendChild(svg('rect', { x: n.x - wdt / 2, y: n.y - 12, width: wdt, height: 24, rx: 5, fill, stroke: '#777' }));
        node.appendChild(svg('text', { x: n.x, y: n.y + 4, 'font-size': 11, 'text-anchor': 'middle' }, n.id));
        g.appendChild(node);
      }
      box.replaceChildren(g);
      label.textContent = `${keep.length} of ${edges.length} edges (threshold ${fmt(thr, 4)})`;
      root.setAttribute('data-edges', String(keep.length));
    }
    slider.addEventListener('input', draw);
    draw();
  };

  // ---- line charts and training ----------------------------------------------------------
  // the two axes of a chart in box {W, H, ml, mr, mt, mb} with 5 ticks each over [x0, x1] and [y0, y1]
  function axes(g, b, X, Y, [x0, x1, y0, y1], xText) {
    g.appendChild(svg('line', { x1: b.ml, y1: b.H - b.mb, x2: b.W - b.mr, y2: b.H - b.mb, stroke: '#999' }));
    g.appendChild(svg('line', { x1: b.ml, y1: b.mt, x2: b.ml, y2: b.H - b.mb, stroke: '#999' }));
    for (let k = 0; k <= 4; k++) {
      const yv = y0 + (y1 - y0) * k / 4, xv = x0 + (x1 - x0) * k / 4;
      g.appendChild(svg('text', { x: b.ml - 4, y: Y(yv) + 4, 'font-size': 10, 'text-anchor': 'end' }, fmt(yv, 3)));
      g.appendChild(svg('text', { x: X(xv), y: b.H - b.mb + 14, 'font-size': 10, 'text-anchor': 'middle' }, xText(xv)));
    }
  }

  MS.lineChart = function (root, pts, opts) {
    const o = Object.assign({ title: '', logx: false, width: 460, height: 220 }, opts || {});
    const data = pts.filter((p) => typeof p[0] === 'number' && typeof p[1] === 'number' && isFinite(p[0]) && isFinite(p[1]));
    const wrap = el('div', { class: 'card chart', 'data-metric': o.title });
    wrap.appendChild(el('h3', { text: o.title }));
    if (!data.length) { wrap.appendChild(el('p', { class: 'muted', text: 'no values' })); root.appendChild(wrap); return wrap; }
    const fx = (s) => o.logx ? Math.log10(s + 1) : s;
    const xs = data.map((p) => fx(p[0])), ys = data.map((p) => p[1]);
    const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1e-9), y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-9);
    const W = o.width, H = o.height, ml = 52, mr = 10, mt = 8, mb = 30;
    const X = (x) => ml + (x - x0) / (x1 - x0) * (W - ml - mr), Y = (y) => mt + (1 - (y - y0) / (y1 - y0)) * (H - mt - mb);
    const g = svgRoot('line', W, H);
    axes(g, { W, H, ml, mr, mt, mb }, X, Y, [x0, x1, y0, y1],
      (xv) => (o.logx ? Math.round(Math.pow(10, xv) - 1) : Math.round(xv)));
    g.appendChild(svg('text', { x: (W + ml) / 2, y: H - 2, 'font-size': 10, 'text-anchor': 'middle', fill: '#666' }, 'step' + (o.logx ? ' (log)' : '')));
    const d = data.map((p, i) => `${i ? 'L' : 'M'}${X(fx(p[0])).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(' ');
    g.appendChild(svg('path', { class: 'series', d, fill: 'none', stroke: '#2f6fbf', 'stroke-width': 1.6 }));
    if (data.length <= 200) {
      for (const p of data) {
        g.appendChild(svg('circle', { cx: X(fx(p[0])).toFixed(1), cy: Y(p[1]).toFixed(1), r: 2.2, fill: '#2f6fbf', 'data-tip': `step ${p[0]}: ${fmt(p[1], 4)}` }));
      }
    }
    const box = el('div', {}, [g]);
    wireTips(box);
    wrap.appendChild(box);
    root.appendChild(wrap);
    return wrap;
  };

  MS.training = function (root, tr) {
    root.replaceChildren();
    if (!tr) { root.appendChild(el('p', { class: 'muted', text: 'No training.json for this model.' })); return; }
    const info = [];
    if (tr.run) info.push(`run ${str(tr.run)}`);
    if ((tr.checkpoints || []).length) info.push(`${tr.checkpoints.length} checkpoints`);
    root.appendChild(el('p', { class: 'small muted', text: info.join(', ') }));
    const ctl = el('label', { class: 'small' });
    const cb = el('input', { type: 'checkbox', class: 'logx' });
    ctl.appendChild(cb); ctl.appendChild(document.createTextNode(' log-scale steps'));
    root.appendChild(ctl);
    const row = el('div', { class: 'row charts' });
    root.appendChild(row);
    const draw = () => { row.replaceChildren(); for (const [k, pts] of Object.entries(tr.metrics)) MS.lineChart(row, pts, { title: k, logx: cb.checked }); };
    cb.addEventListener('change', draw);
    draw();
    if (tr.config && Object.keys(tr.config).length) root.appendChild(el('details', {}, [el('summary', { text: 'run configuration' }), el('pre', { class: 'spec', text: JSON.stringify(tr.config, null, 1) })]));
  };

  // ---- features --------------------------------------------------------------------------
  MS.featureTable = function (root, feats, onOpen) {
    const cols = [['feature', 'feature'], ['label', 'label'], ['density', 'density'], ['max_act', 'max'], ['mean_act', 'mean'], ['explanation', 'explanation'], ['corr', 'corr']];
    let key = 'max_act', desc = true;
    const table = el('table', { class: 'data features-table' });
    const thead = el('thead'), tbody = el('tbody');
    const tr = el('tr');
    cols.forEach(([k, name]) => {
      const th = el('th', { text: name, class: (k === 'label' || k === 'explanation') ? 'l' : null });
      th.addEventListener('click', () => { if (key === k) desc = !desc; else { key = k; desc = k !== 'feature'; } body(); });
      tr.appendChild(th);
    });
    thead.appendChild(tr); table.appendChild(thead); table.appendChild(tbody);
    function body() {
      const rows = feats.slice().sort((a, b) => {
        const x = a[key], y = b[key];
        if (x === y) return 0; if (x === null || x === undefined) return 1; if (y === null || y === undefined) return -1;
        return (x < y ? -1 : 1) * (desc ? -1 : 1);
      });
      tbody.replaceChildren();
      for (const f of rows) {
        const r = el('tr', { class: 'feature-row', 'data-feature': f.feature });
        r.appendChild(el('td', { text: f.feature }));
        r.appendChild(el('td', { class: 'l', text: f.label }));
        r.appendChild(el('td', { text: fmt(f.density) }));
        r.appendChild(el('td', { text: fmt(f.max_act) }));
        r.appendChild(el('td', { text: fmt(f.mean_act) }));
        const ex = str(f.explanation);
        r.appendChild(el('td', { class: 'l small', text: ex.length > 70 ? ex.slice(0, 70) + '…' : ex, title: ex }));
        r.appendChild(el('td', { text: fmt(f.corr) }));
        r.addEventListener('click', () => onOpen(f.feature));
        tbody.appendChild(r);
      }
    }
    body();
    root.appendChild(table);
    return table;
  };

  function tokenLine(ex, scale) {
    const line = el('div', { class: 'example' });
    line.appendChild(el('span', { class: 'act', text: fmt(ex.activation, 3) }));
    const toks = el('span', { class: 'tokens', style: 'display:inline-flex' });
    let centre = -1, best = Infinity;
    (ex.acts || []).forEach((a, i) => { const d = Math.abs(a - ex.activation); if (d < best) { best = d; centre = i; } });
    (ex.tokens || []).forEach((t, i) => {
      const a = (ex.acts || [])[i];
      const v = a === null || a === undefined ? 0 : a / scale;
      const sp = el('span', { class: 'tok' + (i === centre ? ' focus' : ''), text: str(t), 'data-tip': `${str(t)}: ${fmt(a, 4)}` });
      sp.style.background = div(Math.max(-1, Math.min(1, v)));
      if (Math.abs(v) > 0.65) sp.style.color = '#fff';
      toks.appendChild(sp);
    });
    line.appendChild(toks);
    return line;
  }
  MS.tokenLine = tokenLine;
  MS.wireTips = wireTips;

  MS.histogram = function (root, bins) {
    if (!bins || !bins.length) { root.appendChild(el('p', { class: 'muted', text: 'no histogram' })); return; }
    const W = 460, H = 160, ml = 40, mb = 34, n = bins.length;
    const counts = bins.map((b) => count(b.count));
    const maxC = Math.max(1, ...counts);
    const bw = (W - ml - 10) / n;
    const g = svgRoot('histogram', W, H);
    bins.forEach((b, i) => {
      const h = (H - mb - 8) * Math.log1p(counts[i]) / Math.log1p(maxC);
      const lo = b.lo === null ? '-∞' : fmt(b.lo, 3), hi = b.hi === null ? '∞' : fmt(b.hi, 3);
      const centre = (Number(b.lo) || 0) + (Number(b.hi) || 0);
      g.appendChild(svg('rect', { class: 'bar', x: ml + i * bw, y: H - mb - h, width: Math.max(1, bw - 1), height: h,
        fill: centre > 0 ? '#4a86c8' : centre < 0 ? '#d06a6a' : '#999', 'data-tip': `(${lo}, ${hi}]: ${counts[i]}` }));
    });
    g.appendChild(svg('line', { x1: ml, y1: H - mb, x2: W - 10, y2: H - mb, stroke: '#999' }));
    g.appendChild(svg('text', { x: ml, y: H - mb + 14, 'font-size': 10 }, bins[0].lo === null ? '-∞' : fmt(bins[0].lo, 2)));
    g.appendChild(svg('text', { x: W - 10, y: H - mb + 14, 'font-size': 10, 'text-anchor': 'end' }, bins[n - 1].hi === null ? '∞' : fmt(bins[n - 1].hi, 2)));
    g.appendChild(svg('text', { x: (W + ml) / 2, y: H - 4, 'font-size': 10, 'text-anchor': 'middle', fill: '#666' }, 'activation (symmetric-log bins; bar height log count)'));
    const box = el('div', {}, [g]);
    wireTips(box);
    root.appendChild(box);
  };

  MS.featurePage = function (root, page, opts) {
    const o = Object.assign({ onOpen: null }, opts || {});
    root.replaceChildren();
    root.setAttribute('data-feature', str(page.feature));
    root.appendChild(el('h3', { class: 'feature-title', text: `${str(page.set_id)} / feature ${str(page.feature)} (${str(page.label)})` }));
    root.appendChild(kvTable([['active tokens', intfmt(page.n_active)], ['density', fmt(page.density, 4)], ['max', fmt(page.max_act, 4)], ['mean', fmt(page.mean_act, 4)]]));
    // explanations
    root.appendChild(el('h3', { text: 'Explanation' }));
    if (!(page.explanations || []).length) root.appendChild(el('p', { class: 'muted', text: 'no stored explanation' }));
    for (const e of page.explanations || []) {
      const box = el('div', { class: 'card explanation' });
      box.appendChild(el('div', { text: e.explanation }));
      box.appendChild(kvTable([['held-out correlation', fmt(e.corr)], ['precision', fmt(e.precision)], ['recall', fmt(e.recall)], ['loss recovered (mean ablation)', fmt(e.loss_recovered)]]));
      if (e.spec) {
        let spec = str(e.spec);
        try { spec = JSON.stringify(JSON.parse(spec), null, 1); } catch (err) { /* plain text */ }
        box.appendChild(el('details', {}, [el('summary', { text: 'how it was scored' }), el('pre', { class: 'spec', text: spec })]));
      }
      root.appendChild(box);
    }
    const scale = Math.max(1e-9, Math.abs(page.max_act || 0), ...[].concat(...(page.top || []).map((e) => (e.acts || []).map((a) => Math.abs(a || 0)))));
    const ex = el('div', { class: 'examples' });
    ex.appendChild(el('h3', { text: `Top examples (${(page.top || []).length})` }));
    const topBox = el('div', { class: 'examples-top' });
    for (const e of page.top || []) topBox.appendChild(tokenLine(e, scale));
    ex.appendChild(topBox);
    if ((page.quantiles || []).length) {
      ex.appendChild(el('h3', { text: 'Quantile samples' }));
      const qBox = el('div', { class: 'examples-quantiles' });
      for (const e of page.quantiles) qBox.appendChild(tokenLine(e, scale));
      ex.appendChild(qBox);
    }
    wireTips(ex);
    root.appendChild(ex);
    const row = el('div', { class: 'row' });
    const hist = el('div', { class: 'card' }, [el('h3', { text: 'Histogram' })]);
    MS.histogram(hist, page.histogram);
    row.appendChild(hist);
    const logits = el('div', { class: 'card logits' }, [el('h3', { text: 'Logit effects (direct path)' })]);
    const pos = (page.logits || []).filter((r) => r.sign > 0), neg = (page.logits || []).filter((r) => r.sign < 0);
    if (!pos.length && !neg.length) logits.appendChild(el('p', { class: 'muted', text: 'none stored (write direction unknown)' }));
    const lt = el('table', { class: 'data' });
    const n = Math.max(pos.length, neg.length);
    lt.appendChild(el('tr', {}, [el('th', { class: 'l', text: 'promotes' }), el('th', { text: '' }), el('th', { class: 'l', text: 'suppresses' }), el('th', { text: '' })]));
    for (let i = 0; i < n; i++) {
      const p = pos[i], q = neg[i];
      lt.appendChild(el('tr', {}, [el('td', { class: 'l', text: p ? JSON.stringify(p.token) : '' }), el('td', { text: p ? fmt(p.effect) : '' }),
        el('td', { class: 'l', text: q ? JSON.stringify(q.token) : '' }), el('td', { text: q ? fmt(q.effect) : '' })]));
    }
    if (n) logits.appendChild(lt);
    row.appendChild(logits);
    if ((page.coactivation || []).length) {
      const co = el('div', { class: 'card' }, [el('h3', { text: 'Co-activating features' })]);
      for (const r of page.coactivation) {
        const a = el('a', { href: '#', text: str(r.other), 'data-feature': str(r.other) });
        a.addEventListener('click', (evt) => { evt.preventDefault(); if (o.onOpen) o.onOpen(r.other); });
        co.appendChild(el('div', { class: 'small' }, [a, ` ${fmt(r.score)}`]));
      }
      row.appendChild(co);
    }
    root.appendChild(row);
  };

  // ---- vision: image grids, tuning curves, tables ----------------------------------------
  const PALETTE = ['#2f6fbf', '#d9534f', '#3c9a48', '#e08a1e', '#8e44ad', '#16a085', '#7f8c8d', '#b5338a'];
  const finite = (x) => x !== null && x !== undefined && x !== '' && isFinite(Number(x));

  // several (x, y) series on shared axes, as SVG; a legend names them
  MS.curves = function (root, panel, opts) {
    const o = Object.assign({ width: 520, height: 260 }, opts || {});
    const series = (panel.series || []).map((s) => ({
      name: str(s.name),
      pts: (s.x || []).map((x, i) => [x, (s.y || [])[i]]).filter((p) => finite(p[0]) && finite(p[1])).map((p) => [Number(p[0]), Number(p[1])]),
    }));
    const all = series.flatMap((s) => s.pts);
    const wrap = el('div', { class: 'card chart vision-curves', 'data-series': String(series.length) });
    if (!all.length) { wrap.appendChild(el('p', { class: 'muted', text: 'no values' })); root.appendChild(wrap); return wrap; }
    const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
    const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1e-9), y0 = Math.min(...ys, 0), y1 = Math.max(...ys, y0 + 1e-9);
    const W = o.width, H = o.height, ml = 56, mr = 10, mt = 8, mb = 34;
    const X = (x) => ml + (x - x0) / (x1 - x0) * (W - ml - mr), Y = (y) => mt + (1 - (y - y0) / (y1 - y0)) * (H - mt - mb);
    const g = svgRoot('line curves', W, H);
    axes(g, { W, H, ml, mr, mt, mb }, X, Y, [x0, x1, y0, y1], (xv) => fmt(xv, 3));
    g.appendChild(svg('text', { x: (W + ml) / 2, y: H - 4, 'font-size': 10, 'text-anchor': 'middle', fill: '#666' }, str(panel.x_label)));
    g.appendChild(svg('text', { x: 10, y: mt + (H - mt - mb) / 2, 'font-size': 10, 'text-anchor': 'middle', fill: '#666',
      transform: `rotate(-90 10 ${mt + (H - mt - mb) / 2})` }, str(panel.y_label)));
    const legend = el('div', { class: 'legend' });
    series.forEach((s, i) => {
      const colour = PALETTE[i % PALETTE.length];
      if (s.pts.length) {
        const d = s.pts.map((p, j) => `${j ? 'L' : 'M'}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(' ');
        g.appendChild(svg('path', { class: 'series', d, fill: 'none', stroke: colour, 'stroke-width': 1.6, 'data-name': s.name }));
        if (s.pts.length <= 200) {
          for (const p of s.pts) g.appendChild(svg('circle', { cx: X(p[0]).toFixed(1), cy: Y(p[1]).toFixed(1), r: 2, fill: colour, 'data-tip': `${s.name}: ${fmt(p[0], 4)} → ${fmt(p[1], 4)}` }));
        }
      }
      legend.appendChild(el('span', { style: `color: ${colour}; margin-right: 12px`, text: `■ ${s.name}` }));
    });
    const box = el('div', {}, [g]);
    wireTips(box);
    wrap.appendChild(box);
    if (series.length > 1 || series.some((s) => s.name)) wrap.appendChild(legend);
    root.appendChild(wrap);
    return wrap;
  };

  // an image grid: each PNG shown enlarged (pixelated) with its caption; `urlOf(i, image)` gives its URL
  MS.imageGrid = function (root, panel, urlOf) {
    const images = panel.images || [];
    const grid = el('div', { class: 'image-grid', 'data-images': String(images.length) });
    images.forEach((im, i) => {
      const w = count(im.width) || 28, h = count(im.height) || 28;
      const scale = Math.max(1, Math.floor(112 / Math.max(w, h)));
      const url = urlOf(i, im);
      const fig = el('figure', { class: 'vis-image' });
      if (url) fig.appendChild(el('img', { src: url, width: w * scale, height: h * scale, alt: str(im.caption), title: str(im.caption) }));
      else fig.appendChild(el('p', { class: 'muted small', text: 'image not included' }));
      fig.appendChild(el('figcaption', { class: 'small', text: str(im.caption) }));
      grid.appendChild(fig);
    });
    root.appendChild(grid);
    return grid;
  };

  // a vision artifact (mechscope vis): its panels in order; opts.src(panel, index, image) gives each
  // image's URL (the viewer's API); by default an inline PNG data URI (the report), nothing else
  MS.vision = function (root, v, opts) {
    root.replaceChildren();
    const inline = (pi, ii, im) => { const d = im.src; return typeof d === 'string' && d.startsWith('data:image/png;base64,') ? d : null; };
    const urlOf = (opts && opts.src) || inline;
    const net = v.network || {};
    const what = v.channel === null || v.channel === undefined ? `layer ${str(v.layer)}` : `channel ${str(v.channel)} of ${str(v.layer)}`;
    root.appendChild(el('p', { class: 'small muted', text: `${what}${net.name ? ` in ${str(net.name)}` : ''}${net.image ? `, images ${[].concat(net.image).map(str).join('×')}` : ''}` }));
    (v.panels || []).forEach((p, pi) => {
      const sec = el('div', { class: 'vision-panel', 'data-type': str(p.type), 'data-panel': String(pi) }, [el('h4', { text: str(p.title) })]);
      if (p.note) sec.appendChild(el('p', { class: 'small muted', text: str(p.note) }));
      if (p.type === 'images') MS.imageGrid(sec, p, (ii, im) => urlOf(pi, ii, im));
      else if (p.type === 'curves') MS.curves(sec, p);
      else if (p.type === 'table') {
        const t = el('table', { class: 'data vision-table' });
        t.appendChild(el('thead', {}, [el('tr', {}, (p.columns || []).map((c) => el('th', { text: str(c) })))]));
        t.appendChild(el('tbody', {}, (p.rows || []).map((r) => el('tr', {}, [].concat(r).map((c) => el('td', { text: typeof c === 'number' ? fmt(c, 4) : (c === null ? '—' : str(c)) }))))));
        sec.appendChild(t);
      } else if (p.type === 'figures') sec.appendChild(kvTable(Object.entries(p.values || {}).map(([k, x]) => [k, typeof x === 'number' ? fmt(x, 4) : (typeof x === 'object' ? JSON.stringify(x) : str(x))])));
      root.appendChild(sec);
    });
    if (v.settings && Object.keys(v.settings).length) root.appendChild(el('details', {}, [el('summary', { text: 'settings' }), el('pre', { class: 'spec', text: JSON.stringify(v.settings, null, 1) })]));
  };

  // an explain-all artifact: the explanation's size, the joint number per ablation with its interval,
  // each component alone and the share of the unexplained loss it holds, and the robustness table
  MS.explanation = function (root, x) {
    root.replaceChildren();
    const hyp = x.hypothesis || {}, results = x.results || {}, abls = Object.keys(results);
    root.setAttribute('data-explanation', str(x.name));
    root.appendChild(el('h3', { class: 'explanation-title', text: str(hyp.name || x.name) }));
    if (hyp.claim) root.appendChild(el('p', { class: 'small', text: str(hyp.claim) }));
    const ci = (r) => (r && r.ci && r.ci.length === 2 ? `[${fmt(r.ci[0], 6)}, ${fmt(r.ci[1], 6)}]` : '');
    const joint = el('div', { class: 'card joint' });
    joint.appendChild(kvTable([
      ['explanation size', `${intfmt(hyp.lines)} lines of code, ${intfmt(hyp.numbers)} numbers`],
      ['scored on', str(x.dataset)],
      ...abls.map((a) => [`loss recovered vs ${a} ablation`,
        el('span', { class: 'joint-number', 'data-ablation': a, text: `${fmt((results[a].recovered || {}).value, 6)} ${ci(results[a].recovered)}` })])]));
    root.appendChild(joint);
    // components: alone (each ablation) and, jointly, the share of the unexplained loss each holds
    root.appendChild(el('h3', { text: 'Components: alone and jointly' }));
    const head = ['component', 'kind', 'explanation', 'lines', 'numbers', ...abls.map((a) => `alone vs ${a}`),
      ...abls.map((a) => `share of unexplained (${a})`)];
    const ct = el('table', { class: 'data components' });
    ct.appendChild(el('tr', {}, head.map((h, i) => el('th', { class: i < 3 ? 'l' : null, text: h }))));
    (hyp.parts || []).forEach((p, i) => {
      const per = abls.map((a) => ((results[a].parts || [])[i]) || {});
      ct.appendChild(el('tr', {}, [el('td', { class: 'l', text: str(p.component) }), el('td', { class: 'l', text: str(p.kind) }),
        el('td', { class: 'l', text: str(p.name) }), el('td', { text: intfmt(p.lines) }), el('td', { text: intfmt(p.numbers) }),
        ...per.map((r) => el('td', { text: r.alone ? fmt(r.alone.value, 6) : '—' })),
        ...per.map((r) => el('td', { text: fmt(r.unexplained_share, 4) }))]));
    });
    root.appendChild(ct);
    root.appendChild(el('h3', { text: 'Robustness: the whole hypothesis under each ablation' }));
    const rt = el('table', { class: 'data robustness' });
    rt.appendChild(el('tr', {}, ['ablation', 'loss recovered', '95% CI', 'loss clean', 'loss code', 'loss ablated', 'worst group']
      .map((h, i) => el('th', { class: i === 0 ? 'l' : null, text: h }))));
    for (const a of abls) {
      const r = results[a], groups = Object.entries(r.groups || {});
      const worst = groups.length ? groups.reduce((b, g) => ((g[1] || {}).value < (b[1] || {}).value ? g : b)) : null;
      rt.appendChild(el('tr', { 'data-ablation': a }, [el('td', { class: 'l', text: a }), el('td', { text: fmt((r.recovered || {}).value, 6) }),
        el('td', { text: ci(r.recovered) }), el('td', { text: fmt(r.loss_clean, 4) }), el('td', { text: fmt(r.loss_hypothesis, 4) }),
        el('td', { text: fmt(r.loss_ablated, 4) }), el('td', { text: worst ? `${worst[0]}: ${fmt((worst[1] || {}).value, 6)}` : '—' })]));
    }
    root.appendChild(rt);
    const figs = Object.entries(x.figures || {}).filter(([, v]) => v === null || typeof v !== 'object');
    if (figs.length) { root.appendChild(el('h3', { text: 'Figures' })); root.appendChild(kvTable(figs.map(([k, v]) => [k, typeof v === 'number' ? fmt(v, 6) : str(v)]))); }
  };

  // a study artifact: sections of text and tables, the checks (targets fixed before measuring), its graphs
  MS.study = function (root, s, opts) {
    root.replaceChildren();
    root.setAttribute('data-study', str(s.name));
    root.appendChild(el('h3', { text: str(s.title || s.name) }));
    if (s.command) root.appendChild(el('p', { class: 'small' }, [el('span', { text: 're-create: ' }), el('code', { text: str(s.command) })]));
    const cell = (v) => (typeof v === 'number' ? fmt(v, 4) : str(v));
    const grid = (cols, rows) => {
      const t = el('table', { class: 'data' });
      t.appendChild(el('tr', {}, cols.map((h) => el('th', { class: 'l', text: str(h) }))));
      for (const r of rows) t.appendChild(el('tr', {}, r.map((v) => el('td', { class: typeof v === 'number' ? null : 'l', text: cell(v) }))));
      return t;
    };
    for (const sec of s.sections || []) {
      root.appendChild(el('h3', { text: str(sec.heading) }));
      if (sec.text) root.appendChild(el('p', { text: str(sec.text) }));
      for (const t of sec.tables || []) {
        if (t.caption) root.appendChild(el('p', { class: 'small muted', text: str(t.caption) }));
        root.appendChild(grid(t.columns || [], t.rows || []));
      }
    }
    const checks = Object.entries(s.checks || {});
    if (checks.length) {
      root.appendChild(el('h3', { text: 'Checks (targets fixed before measuring)' }));
      root.appendChild(grid(['check', 'target', 'got', ''], checks.map(([k, c]) => [k, c.target, c.got, c.pass ? 'pass' : 'FAIL'])));
    }
    if ((s.graphs || []).length) {
      root.appendChild(el('p', {}, [el('span', { text: 'attribution graphs: ' }),
        ...s.graphs.map((g) => el('a', { class: 'pill', href: opts && opts.graphLink ? opts.graphLink(g) : '#', text: g }))]));
    }
  };

  global.MS = MS;
})(window);
