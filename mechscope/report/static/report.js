/* mechscope report: fills the section containers of report.html from the data embedded in it.
 * Everything it needs is inline (mechscope.js, mechscope.css, the artifacts as JSON). */
(function () {
  'use strict';
  const MS = window.MS, el = MS.el;
  const data = JSON.parse(document.getElementById('ms-data').textContent);

  function features(box, snap, mi) {
    for (const [si, s] of snap.sets.entries()) {
      box.appendChild(el('h4', { text: `${s.set.set_id} — ${s.set.kind}s at ${s.set.site}` }));
      box.appendChild(el('p', { class: 'small muted', text: `${s.set.n_features} features over ${Number(s.set.n_tokens).toLocaleString('en-US')} tokens of ${s.set.dataset}. ${s.pages.length} feature pages are included (largest activations first); click a row.` }));
      const pages = Object.fromEntries(s.pages.map((p) => [p.feature, p]));
      const page = el('div', { class: 'card feature-page', id: `m${mi}-set${si}-page` });
      const open = (f) => {
        if (pages[f]) { MS.featurePage(page, pages[f], { onOpen: open }); page.scrollIntoView({ block: 'nearest' }); }
        else page.replaceChildren(el('p', { class: 'muted', text: `Feature ${f}'s page is not included in this report; open it in the viewer (mechscope view).` }));
      };
      const wrap = el('div', { style: 'max-height: 360px; overflow: auto; margin-bottom: 10px' });
      MS.featureTable(wrap, s.features, open);
      box.appendChild(wrap);
      box.appendChild(page);
      if (s.pages.length) open(s.pages[0].feature);
    }
  }

  function render(box) {
    const mi = Number(box.getAttribute('data-model')), kind = box.getAttribute('data-kind');
    const m = data.models[mi];
    try {
      if (kind === 'overview') MS.overview(box, m.overview, null);
      else if (kind === 'attention') MS.attention(box, m.attention, { idPrefix: `m${mi}-attn` });
      else if (kind === 'head_roles') MS.headRoles(box, m.head_roles);
      else if (kind === 'patching') MS.patching(box, m.patching[Number(box.getAttribute('data-index'))]);
      else if (kind === 'circuit') MS.circuit(box, m.circuits[Number(box.getAttribute('data-index'))], { idPrefix: `m${mi}-circuit${box.getAttribute('data-index')}` });
      else if (kind === 'features') features(box, m.features, mi);
      else if (kind === 'training') MS.training(box, m.training);
      else if (kind === 'vision') MS.vision(box, m.vision[Number(box.getAttribute('data-index'))]);
    } catch (err) {
      box.appendChild(el('div', { class: 'err', text: `could not draw this section: ${err.message}` }));
    }
  }
  document.querySelectorAll('.ms-render').forEach(render);
})();
