"""The viewer and the report in a real browser: headless Debian Chromium driven by Playwright.

The viewer is served by uvicorn in a background thread on a free port of 127.0.0.1; no test
touches the network beyond it. Screenshots go to test-artifacts/ (gitignored).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import pytest

CHROMIUM = "/usr/bin/chromium"
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                 reason=f"{CHROMIUM} is absent (Debian package `chromium`; "
                                        "`sudo apt-get install -y chromium`)")]
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

SHOTS = Path(__file__).resolve().parent.parent / "test-artifacts"
MODEL = "zoo%3Ainduction-quick"


@pytest.fixture(scope="module")
def demo_dir(demo_artifacts):
    return demo_artifacts


@contextmanager
def serving(root):
    """The viewer of `root` on a free port of 127.0.0.1 (checking Host headers for that port, as
    `serve` does), in a background thread; yields its port."""
    import uvicorn

    from mechscope.viewer import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(root, port=port), host="127.0.0.1", port=port,
                                        log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if time.monotonic() > deadline or not th.is_alive():
            pytest.fail("the viewer did not start")
        time.sleep(0.05)
    try:
        yield port
    finally:
        srv.should_exit = True
        th.join(10)


@pytest.fixture(scope="module")
def server(demo_dir):
    with serving(demo_dir) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def page(browser):
    SHOTS.mkdir(exist_ok=True)
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.errors = []  # console errors and uncaught exceptions
    pg.on("console", lambda m: pg.errors.append(f"console: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.errors.append(f"page error: {e}"))
    pg.set_default_timeout(10_000)
    yield pg
    ctx.close()


def test_every_page_loads_without_console_errors(server, page):
    pages = {"overview": "#overview table.kv", "attention": "#attention .head-cell canvas",
             "roles": "#head-roles .role svg", "patching": "#patching svg.heatmap",
             "patching/resid_pre": ".patching[data-name=resid_pre] svg.heatmap", "circuits": "svg.circuit",
             "features": "table.features-table tbody tr", "training": "#training svg.line"}
    for route, selector in pages.items():
        page.goto(f"{server}/#/m/{MODEL}/{route}")
        page.wait_for_selector(selector)
        assert page.locator(".err").count() == 0, (route, page.locator(".err").all_inner_texts())
        page.screenshot(path=str(SHOTS / f"viewer-{route.replace('/', '-')}.png"), full_page=True)
    page.goto(f"{server}/")  # the bare address redirects to the first model's overview
    page.wait_for_selector("#overview")
    assert MODEL.replace("%3A", ":") in page.locator("#model-select").input_value()
    assert page.errors == []


def test_clicking_a_head_opens_its_pattern(server, page):
    page.goto(f"{server}/#/m/{MODEL}/attention")
    page.wait_for_selector("#attn-detail .attn-title")
    assert page.locator("#attn-detail .attn-title").inner_text() == "Layer 0, head 0"
    page.locator('.head-cell[data-head="1.2"]').click()
    page.wait_for_selector('#attn-detail[data-head="1.2"]')
    assert page.locator("#attn-detail .attn-title").inner_text() == "Layer 1, head 2"
    assert page.locator('.head-cell[data-head="1.2"]').get_attribute("class").split().count("selected") == 1
    n = page.locator("#attn-detail .attn-tokens .tok").count()
    assert n == 15 and page.locator("#attn-detail svg.attn-matrix rect").count() == n * n
    tok = page.locator("#attn-detail .attn-tokens .tok").nth(n - 1)
    tok.hover()  # token hover shades the tokens it attends to and shows a tooltip
    assert page.locator("#ms-tooltip").is_visible()
    assert "query 14" in page.locator("#ms-tooltip").inner_text()
    page.screenshot(path=str(SHOTS / "viewer-attention-head-1.2.png"), full_page=True)
    assert page.errors == []


def test_a_feature_page_shows_its_examples(server, page):
    page.goto(f"{server}/#/m/{MODEL}/features")
    page.wait_for_selector("table.features-table tbody tr")
    first = page.locator("table.features-table tbody tr").first
    feature = first.get_attribute("data-feature")
    first.click()
    page.wait_for_selector(".feature-page .examples-top .example")
    assert page.locator(".feature-page").get_attribute("data-feature") == feature
    assert f"feature {feature}" in page.locator(".feature-title").inner_text()
    examples = page.locator(".feature-page .examples-top .example")
    assert examples.count() > 0
    toks = examples.first.locator(".tok")
    assert toks.count() > 1 and "background" in (toks.first.get_attribute("style") or "")
    assert page.locator(".feature-page svg.histogram rect.bar").count() > 0
    assert page.locator(".feature-page .logits td").count() > 0
    assert page.locator(".feature-page .explanation").count() >= 1
    page.screenshot(path=str(SHOTS / f"viewer-feature-{feature}.png"), full_page=True)
    page.goto(f"{server}/#/m/{MODEL}/features/attn_out.0/99999")  # an unknown feature: a message, no crash
    page.wait_for_selector(".err")
    assert "no feature 99999" in page.locator(".err").inner_text()
    assert [e for e in page.errors if "404" not in e] == []


def test_circuit_graph_renders_and_the_slider_prunes_edges(server, page):
    page.goto(f"{server}/#/m/{MODEL}/circuits")
    page.wait_for_selector("svg.circuit g.node")
    assert page.locator("svg.circuit g.node").count() >= 3
    total = page.locator("svg.circuit path.edge").count()
    assert total > 5
    slider = page.locator("input.threshold")
    slider.evaluate("(e) => { e.value = 400; e.dispatchEvent(new Event('input')); }")
    pruned = page.locator("svg.circuit path.edge").count()
    assert 0 < pruned < total
    assert f"{pruned} of {total} edges" in page.locator(".edge-count").inner_text()
    slider.evaluate("(e) => { e.value = 0; e.dispatchEvent(new Event('input')); }")
    assert page.locator("svg.circuit path.edge").count() == total
    slider.evaluate("(e) => { e.value = 1000; e.dispatchEvent(new Event('input')); }")
    assert page.locator("svg.circuit path.edge").count() >= 1  # the strongest edge survives
    page.screenshot(path=str(SHOTS / "viewer-circuit-pruned.png"), full_page=True)
    assert page.errors == []


def test_the_report_opens_offline_with_every_section_drawn(demo_dir, browser, tmp_path):
    from mechscope.report import write_report

    path = write_report(demo_dir, tmp_path / "report.html")
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, offline=True)
    requests = []
    ctx.on("request", lambda r: requests.append(r.url))
    pg = ctx.new_page()
    errors = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(path.as_uri())
    pg.wait_for_selector("svg.circuit path.edge")
    for sel in ("#m0-overview table.kv", "#m0-attention .head-cell", "#m0-head_roles svg", "#m0-patching svg.heatmap",
                "#m0-circuits svg.circuit", "#m0-features .feature-page .example", "#m0-training svg.line"):
        assert pg.locator(sel).count() > 0, sel
    pg.locator('#m0-attention .head-cell[data-head="1.1"]').click()
    assert pg.locator("#m0-attn-detail .attn-title").inner_text() == "Layer 1, head 1"
    pg.screenshot(path=str(SHOTS / "report.png"), full_page=True)
    ctx.close()
    assert errors == []
    assert [u for u in requests if not u.startswith("file:")] == []


@pytest.fixture(scope="module")
def graph_site(tmp_path_factory):
    from graph_support import build_graph_artifacts

    root, doc = build_graph_artifacts(tmp_path_factory.mktemp("graph") / "out")
    with serving(root) as port:
        yield f"http://127.0.0.1:{port}", doc


def test_the_graph_page_draws_hovers_pins_and_groups(graph_site, page):
    from graph_support import MODEL

    url, doc = graph_site
    page.goto(f"{url}/#/m/{MODEL}/graphs")
    page.wait_for_selector("svg.attribution-graph g.node")
    nodes, view = page.locator("svg.attribution-graph g.node"), page.locator(".graph-view")
    n = len(doc["nodes"])
    assert nodes.count() == n and view.get_attribute("data-nodes") == str(n)
    assert sorted(int(i) for i in _attrs(page, "svg.attribution-graph g.node", "data-node")) == sorted(
        x["id"] for x in doc["nodes"])
    shown = page.locator("svg.attribution-graph path.edge").count()
    assert 0 < shown <= 120 < len(doc["edges"])  # the strongest edges by default
    page.locator("input.graph-threshold").evaluate("(e) => { e.value = 0; e.dispatchEvent(new Event('input')); }")
    assert page.locator("svg.attribution-graph path.edge").count() == len(doc["edges"])
    assert _texts(page, "svg.attribution-graph text.col-label") == doc["token_text"]
    # rows: token embeddings at the bottom, logits at the top
    ys = {k: [float(nodes.nth(i).locator("rect, circle").first.evaluate(
        "(e) => e.getBBox().y + e.getBBox().height / 2")) for i in range(n) if doc["nodes"][i]["kind"] == k]
        for k in ("token", "latent", "logit")}
    assert min(ys["token"]) > max(ys["latent"]) > min(ys["latent"]) > max(ys["logit"])

    lat0 = next(x for x in doc["nodes"] if x["kind"] == "latent" and x["layer"] == 0)
    page.locator(f'g.node[data-node="{lat0["id"]}"]').hover()
    page.wait_for_selector(".graph-dashboard .examples-top .example")
    assert page.locator(".graph-detail .node-title").inner_text() == lat0["label"]
    assert page.locator(".graph-dashboard .explanation").inner_text().startswith(f"fires on t{lat0['index']}")
    lat1 = next(x for x in doc["nodes"] if x["kind"] == "latent" and x["layer"] == 1)
    page.locator(f'g.node[data-node="{lat1["id"]}"]').hover()
    page.wait_for_selector(".graph-dashboard .no-dashboard")
    assert "no feature store" in page.locator(".graph-dashboard").inner_text()

    page.locator(f'g.node[data-node="{lat0["id"]}"]').click()  # pin: listed, its edges highlighted
    assert page.locator(".graph-pins .pin").count() == 1
    assert "pinned" in page.locator(f'g.node[data-node="{lat0["id"]}"]').get_attribute("class")
    touching = [e for e in doc["edges"] if lat0["id"] in (e["source"], e["target"])]
    assert page.locator("svg.attribution-graph path.edge.hl").count() == len(touching) > 0

    a, b = [x["id"] for x in doc["nodes"] if x["kind"] == "latent" and x["id"] != lat0["id"]][:2]
    page.locator(f'g.node[data-node="{a}"]').click(modifiers=["Shift"])
    page.locator(f'g.node[data-node="{b}"]').click(modifiers=["Shift"])
    page.locator("button.group-btn").click()
    assert nodes.count() == n - 1 and page.locator("g.node.supernode").count() == 1
    assert page.locator(".graph-groups .group").count() == 1
    page.reload()  # pins and groups are kept
    page.wait_for_selector("g.node.supernode")
    assert nodes.count() == n - 1 and page.locator(".graph-pins .pin").count() == 1
    page.screenshot(path=str(SHOTS / "viewer-graph.png"), full_page=True)
    page.locator(".graph-groups button.ungroup").click()
    assert nodes.count() == n and page.locator("g.node.supernode").count() == 0
    assert page.errors == []


def test_an_explanation_page_shows_the_joint_numbers(browser, tmp_path):
    """An explain-all artifact in the viewer: the joint loss recovered with its interval and the explanation's
    size, the component table and the robustness table, with no console error."""
    from mechscope.studies import explain_all as ea
    from test_explain_all import sample_explanation

    ea.write_artifact(sample_explanation(), str(tmp_path / "out"))
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    errors = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.set_default_timeout(10_000)
    with serving(tmp_path / "out") as port:
        pg.goto(f"http://127.0.0.1:{port}/#/m/zoo%3Amodadd/explanations")
        pg.wait_for_selector(".explanation-view table.robustness")
        assert pg.locator('.joint-number[data-ablation="mean"]').text_content() == "0.9991 [0.998, 0.9995]"
        assert pg.locator('.joint-number[data-ablation="zero"]').text_content() == "0.9876 [0.9811, 0.9902]"
        assert "17 lines of code, 1,408 numbers" in pg.locator(".explanation-view .joint").inner_text()
        row = pg.locator("table.components tr").nth(1).all_text_contents()[0]
        assert "angle_sum_features" in row and "0.9997" in row and "0.4321" in row
        assert "inst[1]: 0.9712" in pg.locator('table.robustness tr[data-ablation="zero"]').inner_text()
        assert pg.locator('#tabs a[data-tab="explanations"]').get_attribute("class") == "active"
        pg.screenshot(path=str(SHOTS / "viewer-explanations.png"), full_page=True)
    ctx.close()
    assert errors == []


# ---- hostile artifacts: every string a renderer shows is data, never markup -------------------

INERT = """() => ({
  pwned: window.__pwned === undefined ? null : window.__pwned,
  title: document.title,
  markup: [...document.querySelectorAll('img, iframe, object, embed, [onerror], [onload], [onclick]')]
    .map((e) => e.outerHTML.slice(0, 80)),
  scripts: document.querySelectorAll('script').length,
  links: [...document.querySelectorAll('a[href]')].map((a) => a.getAttribute('href')).filter((h) => !h.startsWith('#')),
})"""


@pytest.fixture(scope="module")
def hostile(hostile_artifacts):
    root, H = hostile_artifacts
    with serving(root) as port:
        yield f"http://127.0.0.1:{port}", root, H


def _hostile_page(browser, **kw):
    # the page's Content-Security-Policy is bypassed: escaping alone must keep every payload inert
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True, **kw)
    pg = ctx.new_page()
    pg.requests, pg.errors = [], []
    ctx.on("request", lambda r: pg.requests.append(r.url))
    pg.on("console", lambda m: pg.errors.append(f"console: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.errors.append(f"page error: {e}"))
    pg.on("dialog", lambda d: (pg.errors.append(f"dialog: {d.message}"), d.dismiss()))
    pg.set_default_timeout(10_000)
    return ctx, pg


def _assert_inert(pg, title: str, scripts: int) -> None:
    pg.wait_for_timeout(300)  # time for an injected image's error handler to fire
    got = pg.evaluate(INERT)
    assert got["pwned"] is None, got["pwned"]
    assert got["title"] == " ".join(title.split())
    assert got["markup"] == [] and got["scripts"] == scripts and got["links"] == [], got
    assert [u for u in pg.requests if urlparse(u).path.startswith("/pwned/")] == []  # what a payload asks for
    assert pg.errors == []


def _texts(pg, selector):
    return pg.locator(selector).all_text_contents()


def _attrs(pg, selector, name):
    return pg.locator(selector).evaluate_all(f"(es) => es.map((e) => e.getAttribute('{name}'))")


def test_a_hostile_artifact_runs_nothing_in_the_viewer(hostile, browser):
    from urllib.parse import quote

    url, _, H = hostile
    ctx, pg = _hostile_page(browser)
    hash_ = f"{url}/#/m/{quote(H['model'], safe='')}"
    pg.goto(f"{url}/")  # redirects to the first model: its name travels through the address
    pg.wait_for_selector("#overview table.kv")
    assert pg.locator("#model-select option").first.text_content() == H["model"]
    assert pg.locator("#model-select").input_value() == H["model"]
    ov = pg.locator("#overview").text_content()
    assert all(H[k] in ov for k in ("model", "architecture", "note_key", "note"))

    pg.goto(f"{hash_}/attention")
    pg.wait_for_selector("#attention .attn-tokens .tok")
    assert _texts(pg, "#attention .attn-tokens .tok") == [H["tok0"], H["tok1"], "plain"]
    assert _texts(pg, "#attention svg.attn-matrix text.ktok") == [H["tok0"], H["tok1"], "plain"]
    assert H["prompt"] in pg.locator("#attention").text_content()

    pg.goto(f"{hash_}/roles")
    pg.wait_for_selector("#head-roles .causal svg")
    assert _attrs(pg, "#head-roles .role", "data-role") == [H["role"]]
    roles = pg.locator("#head-roles").text_content()
    assert f"{H['probe_key']}={H['probe']}" in roles and "Causal check: " + H["causal_metric"] in roles
    assert "ablation: " + H["causal_ablation"] in roles

    pg.goto(f"{hash_}/patching")
    pg.wait_for_selector("#patching svg.heatmap rect.hm-cell")
    assert pg.locator("#patching h3").first.text_content() == H["patch_title"]
    assert {H["row"], H["col"]} <= set(_texts(pg, "#patching svg.heatmap text"))
    assert f"{H['row']} / {H['col']}: 0.5" in _attrs(pg, "#patching rect.hm-cell", "data-tip")
    specs = _texts(pg, "#patching .spec")
    assert "ablation: " + H["ablation"] in specs and any(H["metric"] in t for t in specs)

    pg.goto(f"{hash_}/circuits")
    pg.wait_for_selector("svg.circuit path.edge", state="attached")
    assert pg.locator(".circuit-view h3").text_content() == f"{H['circuit_name']} — {H['method']}"
    assert H["node"] in _texts(pg, "svg.circuit g.node text") and H["node"] in _attrs(pg, "svg.circuit g.node", "data-node")
    assert f"input → {H['node']} ({H['via']}): 0.5" in _attrs(pg, "svg.circuit path.edge", "data-tip")
    faith = pg.locator(".circuit-view .faith").text_content()
    assert all(H[k] in faith for k in ("faith_metric", "aggregation", "dataset_name", "faith_n"))
    assert "ablation: " + H["circuit_ablation"] in _texts(pg, ".circuit-view .spec")

    pg.goto(f"{hash_}/features")
    pg.wait_for_selector("table.features-table tbody tr")
    head = pg.locator("#features").text_content()
    assert all(H[k] in head for k in ("set", "kind", "site", "set_dataset"))
    assert _texts(pg, "table.features-table td.l:not(.small)") == [H["label"]] * 2
    assert _attrs(pg, "table.features-table td.small", "title")[0] == H["explanation"]
    pg.locator('table.features-table tr[data-feature="0"]').click()
    pg.wait_for_selector(".feature-page .examples-top .example")
    assert pg.locator(".feature-title").text_content() == f"{H['set']} / feature 0 ({H['label']})"
    assert pg.locator(".feature-page .explanation > div").first.text_content() == H["explanation"]
    assert pg.locator(".feature-page .explanation pre.spec").text_content() == H["spec"]
    assert _texts(pg, ".feature-page .examples-top .tok") == [H["ex_tok"], "plain"]
    assert json.dumps(H["logit_tok"]) in _texts(pg, ".feature-page .logits td")
    pg.locator('.feature-page a[data-feature="1"]').click()  # a co-activating feature: an in-page link
    pg.wait_for_selector('.feature-page[data-feature="1"]')

    pg.goto(f"{hash_}/training")
    pg.wait_for_selector("#training svg.line")
    assert _attrs(pg, "#training .chart", "data-metric") == [H["curve"]]
    assert pg.locator("#training .chart h3").text_content() == H["curve"]
    assert H["run"] in pg.locator("#training").text_content()

    pg.goto(f"{hash_}/explanations")
    pg.wait_for_selector(".explanation-view table.robustness")
    assert pg.locator(".explanation-title").text_content() == H["expl_hyp"]
    view = pg.locator(".explanation-view").text_content()
    assert all(H[k] in view for k in ("expl_claim", "expl_component", "expl_part", "expl_dataset", "expl_fig"))
    assert f"{H['expl_group']}: 0.125" in view and H["expl_ablation"] in view
    assert _attrs(pg, ".explanation-view .joint-number", "data-ablation") == [H["expl_ablation"]]

    pg.goto(f"{url}/#/m/{quote(H['prompt'], safe='')}/overview")  # an address naming no model
    pg.wait_for_selector(".err")
    assert pg.locator(".err").text_content() == f"No model named {H['prompt']}."
    pg.screenshot(path=str(SHOTS / "viewer-hostile.png"), full_page=True)
    _assert_inert(pg, "mechscope viewer", scripts=3)
    ctx.close()


def test_a_hostile_artifact_runs_nothing_in_the_report(hostile_artifacts, browser, tmp_path):
    from mechscope.report import write_report

    root, H = hostile_artifacts
    title = H["model"].replace("model", "report title")
    path = write_report(root, tmp_path / "report.html", title=title)
    ctx, pg = _hostile_page(browser, offline=True)
    pg.goto(path.as_uri())
    pg.wait_for_selector("#m0-circuits svg.circuit path.edge", state="attached")
    pg.wait_for_selector("#m0-features .feature-page .example")
    assert pg.locator("#model-0 > h2").text_content() == H["model"]
    assert H["created"] in pg.locator("header.top").text_content()
    assert pg.locator("header.top h1").text_content() == title
    assert H["architecture"] in pg.locator("#m0-overview").text_content()
    assert _texts(pg, "#m0-attention .attn-tokens .tok") == [H["tok0"], H["tok1"], "plain"]
    assert pg.locator("#m0-patching h3").nth(1).text_content() == H["patch_title"]
    assert f"input → {H['node']} ({H['via']}): 0.5" in _attrs(pg, "#m0-circuits path.edge", "data-tip")
    assert pg.locator("#m0-circuits .circuit-view h3").text_content() == f"{H['circuit_name']} — {H['method']}"
    assert pg.locator("#m0-features .feature-title").text_content() == f"{H['set']} / feature 0 ({H['label']})"
    assert _texts(pg, "#m0-features .examples-top .tok") == [H["ex_tok"], "plain"]
    assert pg.locator("#m0-training .chart h3").text_content() == H["curve"]
    expl = pg.locator("#m0-explanations").text_content()
    assert all(H[k] in expl for k in ("expl_hyp", "expl_claim", "expl_component", "expl_part", "expl_dataset",
                                      "expl_ablation"))
    assert f"{H['expl_group']}: 0.125" in expl
    _assert_inert(pg, title, scripts=3)
    assert [u for u in pg.requests if not u.startswith("file:")] == []
    ctx.close()


def test_a_name_rebound_to_this_machine_is_refused(hostile, browser):
    """DNS rebinding in a real browser: a name resolved to 127.0.0.1 reaches the viewer's port but
    is answered 400; the viewer's own addresses work."""
    url, _, _ = hostile
    port = url.rsplit(":", 1)[1]
    b = browser.browser_type.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--host-resolver-rules=MAP rebind.test 127.0.0.1", "--no-proxy-server"])
    try:
        pg = b.new_page()
        for path in ("/", "/api/models", "/static/app.js"):
            r = pg.goto(f"http://rebind.test:{port}{path}")
            assert r.status == 400 and "DNS rebinding" in r.text(), (path, r.status)
        for host in ("127.0.0.1", "localhost"):
            r = pg.goto(f"http://{host}:{port}/api/models")
            assert r.status == 200 and r.json()["models"], host
    finally:
        b.close()


def test_a_hostile_graph_runs_nothing_in_the_viewer(browser, tmp_path):
    from urllib.parse import quote

    from conftest import hostile_text
    from graph_support import dashboard_rows
    from mechscope import artifacts as A
    from mechscope.features.store import FeatureStore

    H = {k: hostile_text(k) for k in ("gmodel", "gtok", "glabel", "gprompt", "gexpl", "gex", "gflabel")}
    sid = hostile_text("gset", slash=False)
    rows = dashboard_rows(sid, 4)
    for r in rows["features"]:
        r["label"] = H["gflabel"]
    for r in rows["examples"]:
        r["tokens"], r["acts"] = [H["gex"], "plain"], [1.0, 0.5]
    for r in rows["explanations"]:
        r["explanation"] = H["gexpl"]
    store = tmp_path / "f.duckdb"
    with FeatureStore(store) as st:
        st.replace_set({"set_id": sid, "model": "m", "site": "s", "kind": "latent", "n_features": 4, "n_tokens": 1,
                        "dataset": "d", "built_at": "now"}, rows)
    node = lambda i, kind, **kw: {"id": i, "kind": kind, "value": 1.0, "label": H["glabel"], **kw}  # noqa: E731
    doc = {"schema": "mechscope.attribution_graph/1", "model": H["gmodel"], "tokens": [1, 2],
           "token_text": [H["gtok"], "plain"], "scores": {}, "meta": {},
           "nodes": [node(0, "token", pos=0, index=1), node(1, "token", pos=1, index=2),
                     node(2, "latent", layer=0, pos=1, index=2, influence=0.5), node(3, "logit", pos=1, index=0, prob=0.9)],
           "edges": [{"source": 0, "target": 2, "weight": 0.5}, {"source": 2, "target": 3, "weight": -0.3},
                     {"source": 1, "target": 3, "weight": 0.2}]}
    root = tmp_path / "out"
    A.ArtifactWriter(root).model(H["gmodel"]).graph("g", doc, prompt=H["gprompt"], feature_sets={0: sid}, store=store)
    with serving(root) as port:
        ctx, pg = _hostile_page(browser)
        pg.goto(f"http://127.0.0.1:{port}/#/m/{quote(H['gmodel'], safe='')}/graphs")
        pg.wait_for_selector("svg.attribution-graph g.node")
        assert pg.locator(".graph-view h3").first.text_content() == f"g — {H['gprompt']}"
        assert f"position 0: {H['gtok']}" in _attrs(pg, "text.col-label", "data-tip")
        pg.locator('g.node[data-node="2"]').hover()
        pg.wait_for_selector(".graph-dashboard .examples-top .example")
        assert pg.locator(".graph-detail .node-title").text_content() == H["glabel"]
        assert pg.locator(".graph-dashboard .explanation").text_content().startswith(H["gexpl"])
        assert _texts(pg, ".graph-dashboard .examples-top .tok") == [H["gex"], "plain"]
        assert H["gflabel"] in pg.locator(".graph-dashboard .dashboard-title").text_content()
        pg.locator('g.node[data-node="2"]').click()
        pg.locator('g.node[data-node="0"]').click(modifiers=["Shift"])
        pg.locator('g.node[data-node="1"]').click(modifiers=["Shift"])
        pg.locator("button.group-btn").click()
        assert pg.locator("g.node").count() == 3
        assert H["glabel"] in pg.locator(".graph-groups .group").text_content()
        assert pg.locator(".graph-pins .pin").text_content().startswith(H["glabel"])
        _assert_inert(pg, "mechscope viewer", scripts=3)
        ctx.close()
