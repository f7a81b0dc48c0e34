"""The viewer and the report in a real browser: headless Debian Chromium driven by Playwright.

The viewer is served by uvicorn in a background thread on a free port of 127.0.0.1; no test
touches the network beyond it. Screenshots go to test-artifacts/ (gitignored).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

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


@pytest.fixture(scope="module")
def server(demo_dir):
    import uvicorn

    from mechscope.viewer import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(demo_dir), host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if time.monotonic() > deadline or not th.is_alive():
            pytest.fail("the viewer did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    th.join(10)


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


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
