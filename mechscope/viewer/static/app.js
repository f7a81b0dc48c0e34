/* mechscope viewer: a hash-routed single page over the JSON API (see mechscope/viewer/app.py).
 * Routes: #/m/MODEL/overview | attention | roles | patching[/NAME] | circuits[/NAME] | graphs[/NAME] | features[/SET/FEATURE]
 *         | training | explanations[/NAME] | vision[/NAME] | studies[/NAME] */
(function () {
  'use strict';
  const MS = window.MS, el = MS.el;
  const main = document.getElementById('main'), tabs = document.getElementById('tabs'), select = document.getElementById('model-select');
  const TABS = [['overview', 'Overview'], ['attention', 'Attention'], ['roles', 'Head roles'], ['patching', 'Patching'],
    ['circuits', 'Circuits'], ['graphs', 'Graphs'], ['features', 'Features'], ['training', 'Training'],
    ['explanations', 'Explanations'], ['vision', 'Vision'], ['studies', 'Studies']];
  let models = [];
  const enc = encodeURIComponent;

  async function api(path) {
    const r = await fetch(path);
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) throw new Error((body && body.error) || `${r.status} ${r.statusText}`);
    return body;
  }

  function showError(err) {
    main.replaceChildren(el('div', { class: 'err', text: String(err && err.message ? err.message : err) }));
  }

  function parse() {
    const dec = (p) => { try { return decodeURIComponent(p); } catch (e) { return p; } };  // a malformed escape stays as typed
    const parts = location.hash.replace(/^#\/?/, '').split('/').filter((p) => p.length).map(dec);
    if (parts[0] !== 'm' || parts.length < 2) return { model: null };
    return { model: parts[1], page: parts[2] || 'overview', rest: parts.slice(3) };
  }

  function go(model, page, ...rest) {
    location.hash = '#/m/' + [model, page, ...rest].map((p) => enc(String(p))).join('/');
  }

  function header(route) {
    select.replaceChildren();
    for (const m of models) select.appendChild(el('option', { value: m.name, text: m.name, selected: m.name === route.model }));
    tabs.replaceChildren();
    for (const [key, name] of TABS) {
      tabs.appendChild(el('a', { href: '#/m/' + enc(route.model) + '/' + key, class: key === route.page ? 'active' : null, 'data-tab': key, text: name }));
    }
  }
  select.addEventListener('change', () => go(select.value, parse().page || 'overview'));

  const base = (dir) => '/api/models/' + enc(dir);

  // a section of named results: links to each, then the one the address names (else the first) drawn by `draw`
  async function named(route, section, title, none, boxClass, draw) {
    const { names } = await api(base(route.dir) + '/' + section);
    const sec = el('section', { class: 'part', id: section }, [el('h2', { text: title })]);
    if (!names.length) { sec.appendChild(el('p', { class: 'muted', text: none })); return sec; }
    const name = route.rest[0] || names[0];
    sec.appendChild(el('div', {}, names.map((n) => el('a', { href: '#/m/' + enc(route.model) + '/' + section + '/' + enc(n), class: 'pill', text: n }))));
    const d = await api(base(route.dir) + '/' + section + '/' + enc(name));
    const box = el('div', { class: boxClass, 'data-name': name }); sec.appendChild(box);
    draw(box, d);
    return sec;
  }

  const pages = {
    async overview(route) {
      const d = await api(base(route.dir) + '/overview');
      const sec = el('section', { class: 'part', id: 'overview' }, [el('h2', { text: 'Model overview' })]);
      const box = el('div'); sec.appendChild(box);
      MS.overview(box, d.overview, d.summary);
      return sec;
    },
    async attention(route) {
      const d = await api(base(route.dir) + '/attention');
      const sec = el('section', { class: 'part', id: 'attention' }, [el('h2', { text: 'Attention patterns' })]);
      const box = el('div'); sec.appendChild(box);
      const w = MS.attention(box, d);
      if (route.rest.length === 2 && w) w.select(Number(route.rest[0]), Number(route.rest[1]));
      return sec;
    },
    async roles(route) {
      const d = await api(base(route.dir) + '/head_roles');
      const sec = el('section', { class: 'part', id: 'head-roles' }, [el('h2', { text: 'Head-role scores' })]);
      const box = el('div'); sec.appendChild(box);
      MS.headRoles(box, d);
      return sec;
    },
    patching: (route) => named(route, 'patching', 'Activation patching', 'No patching results.', 'patching', MS.patching),
    circuits: (route) => named(route, 'circuits', 'Circuits', 'No circuits.', 'circuit-view', MS.circuit),
    graphs: (route) => named(route, 'graphs', 'Attribution graphs',
      'No attribution graphs (save one with `mechscope graph ... --artifacts DIR`).', 'graph-view', (box, d) => {
        const url = base(route.dir) + '/graphs/' + enc(box.dataset.name);
        MS.attributionGraph(box, d, { fetchNode: (id) => api(url + '/nodes/' + enc(id)),
          storageKey: 'mechscope.graph:' + route.dir + '/' + box.dataset.name });
      }),
    async features(route) {
      if (route.rest.length >= 2) {
        const [set, feat] = route.rest;
        const d = await api(base(route.dir) + '/features/' + enc(set) + '/' + enc(feat));
        const sec = el('section', { class: 'part', id: 'feature-page' }, [
          el('p', {}, [el('a', { href: '#/m/' + enc(route.model) + '/features', text: '← all features' })])]);
        const box = el('div', { class: 'feature-page' }); sec.appendChild(box);
        MS.featurePage(box, d, { onOpen: (f) => go(route.model, 'features', set, f) });
        return sec;
      }
      const d = await api(base(route.dir) + '/features');
      const sec = el('section', { class: 'part', id: 'features' }, [el('h2', { text: 'Features' })]);
      for (const s of d.sets) {
        sec.appendChild(el('h3', { text: `${s.set.set_id} — ${s.set.kind}s at ${s.set.site}` }));
        sec.appendChild(el('p', { class: 'small muted', text: `${s.set.n_features} features over ${Number(s.set.n_tokens).toLocaleString('en-US')} tokens of ${s.set.dataset}. Click a row to open its page; click a header to sort.` }));
        MS.featureTable(sec, s.features, (f) => go(route.model, 'features', s.set.set_id, f));
      }
      return sec;
    },
    async vision(route) {
      const { names } = await api(base(route.dir) + '/vision');
      const sec = el('section', { class: 'part', id: 'vision' }, [el('h2', { text: 'Vision: what channels respond to' })]);
      if (!names.length) { sec.appendChild(el('p', { class: 'muted', text: 'No vision artifacts (mechscope vis writes them).' })); return sec; }
      const name = route.rest[0] || names[0];
      sec.appendChild(el('div', {}, names.map((n) => el('a', { href: '#/m/' + enc(route.model) + '/vision/' + enc(n), class: 'pill', text: n }))));
      const d = await api(base(route.dir) + '/vision/' + enc(name));
      const box = el('div', { class: 'vision-view', 'data-name': name }); sec.appendChild(box);
      const url = base(route.dir) + '/vision/' + enc(name) + '/image/';
      MS.vision(box, d, { src: (pi, ii) => url + pi + '/' + ii });
      return sec;
    },
    async training(route) {
      const d = await api(base(route.dir) + '/training');
      const sec = el('section', { class: 'part', id: 'training' }, [el('h2', { text: 'Training dynamics' })]);
      const box = el('div'); sec.appendChild(box);
      MS.training(box, d);
      return sec;
    },
    explanations: (route) => named(route, 'explanations', 'Explanations as code',
      'No explanations (mechscope explain-all NAME --out DIR writes one).', 'explanation-view', MS.explanation),
    studies: (route) => named(route, 'studies', 'Studies',
      'No studies (python -m mechscope.studies.smol_graphs --artifacts DIR writes one).', 'study-view',
      (box, d) => MS.study(box, d, { graphLink: (g) => '#/m/' + enc(route.model) + '/graphs/' + enc(g) })),
  };

  let renderSeq = 0;
  async function render() {
    const route = parse(), mine = ++renderSeq;
    try {
      if (!models.length) models = (await api('/api/models')).models;
      if (!models.length) { showError('This artifact directory has no models.'); return; }
      // a directory of `mechscope vis` output has no overview: its first page is then the Vision tab
      const first = models[0];
      if (!route.model) { go(first.name, !first.overview && (first.vision || []).length ? 'vision' : 'overview'); return; }
      const entry = models.find((m) => m.name === route.model);
      if (!entry) { header(route); showError(`No model named ${route.model}.`); return; }
      route.dir = entry.dir;  // the API is addressed by directory name: a model's name may hold any character
      header(route);
      const fn = Object.hasOwn(pages, route.page) ? pages[route.page] : null;
      if (!fn) { showError(`No page ${route.page}.`); return; }
      main.replaceChildren(el('p', { class: 'muted', text: 'Loading…' }));
      const sec = await fn(route);
      if (mine !== renderSeq) return;  // a later navigation superseded this one
      main.replaceChildren(sec);
      document.body.setAttribute('data-page', route.page);
    } catch (err) {
      if (mine === renderSeq) showError(err);
    }
  }
  window.addEventListener('hashchange', render);
  render();
})();
