"""Vision artifacts in a real browser (headless Debian Chromium through Playwright): the viewer's Vision
page and the report draw the image grid with every PNG decoded, and the tuning curves."""

from __future__ import annotations

import os

import pytest

import test_browser
from test_browser import CHROMIUM, SHOTS, serving  # the shared set-up: Chromium, the viewer
from test_vision_artifacts import NAME, write_example

if hasattr(test_browser, "browser"):  # the viewer tests' Chromium fixture, where conftest.py does not hold it
    browser = test_browser.browser

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (Debian package `chromium`)")]

LOADED = """(sel) => [...document.querySelectorAll(sel)].map((i) => [i.complete, i.naturalWidth, i.naturalHeight])"""


@pytest.fixture(scope="module")
def vision_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision-artifacts")
    write_example(root)
    return root


def _page(browser, **kw):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, **kw)
    pg = ctx.new_page()
    pg.errors, pg.requests = [], []
    ctx.on("request", lambda r: pg.requests.append(r.url))
    pg.on("console", lambda m: pg.errors.append(f"console: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.errors.append(f"page error: {e}"))
    pg.set_default_timeout(10_000)
    return ctx, pg


def _check_drawn(pg, scope: str) -> None:
    grid = f"{scope} .vision-panel[data-type=images] .image-grid img"
    pg.wait_for_function(f"() => {{ const s = [...document.querySelectorAll({grid!r})]; "
                         "return s.length === 3 && s.every((i) => i.complete && i.naturalWidth > 0); }")
    assert pg.evaluate(LOADED, grid) == [[True, 28, 28], [True, 56, 28], [True, 84, 28]]
    assert pg.locator(f"{scope} .vision-panel[data-type=images] figcaption").all_inner_texts() == [
        "image 0", "image 1", "image 2"]
    curves = f"{scope} .vision-panel[data-type=curves] svg.curves"
    assert pg.locator(curves).count() == 1
    assert pg.locator(f"{curves} path.series").count() == 2  # one line per stimulus family
    assert pg.locator(f"{curves} circle").count() == 5  # the NaN point is left out
    assert pg.locator(f"{scope} .vision-panel[data-type=table] td").all_inner_texts() == ["0°/90°", "3, 7"]


def test_the_viewers_vision_page_draws_images_and_curves(vision_dir, browser):
    with serving(vision_dir) as port:
        ctx, pg = _page(browser)
        pg.goto(f"http://127.0.0.1:{port}/#/m/zoo%3Afmnist-cnn/vision")
        pg.wait_for_selector(f".vision-view[data-name='{NAME}']")
        _check_drawn(pg, "#vision")
        assert pg.locator(".err").count() == 0
        SHOTS.mkdir(exist_ok=True)
        pg.screenshot(path=str(SHOTS / "viewer-vision.png"), full_page=True)
        assert pg.locator("#tabs a[data-tab=vision].active").count() == 1
        ctx.close()
    assert pg.errors == []


def test_the_report_draws_them_offline(vision_dir, browser, tmp_path):
    from mechscope.report import write_report

    path = write_report(vision_dir, tmp_path / "report.html")
    ctx, pg = _page(browser, offline=True)
    pg.goto(path.as_uri())
    _check_drawn(pg, "#m0-vision")
    SHOTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(SHOTS / "report-vision.png"), full_page=True)
    ctx.close()
    assert pg.errors == []
    assert [u for u in pg.requests if not u.startswith(("file:", "data:"))] == []


@pytest.fixture(scope="module")
def vis_dir(tmp_path_factory):
    """What `mechscope vis fmnist-cnn-quick conv2:1` writes (short settings), report included."""
    from mechscope.cli_vis import run_vis
    from mechscope.report import write_report
    from mechscope.vision import feature_layer
    from mechscope.vision.networks import load_network

    root = tmp_path_factory.mktemp("vis")
    net = load_network("fmnist-cnn-quick", progress=False)
    run_vis(net, net.name, feature_layer(net.module, "conv2", net.spec), 1, root, steps=8, examples=3, dataset=300)
    write_report(root)
    return root


ALL_DRAWN = """() => { const s = [...document.querySelectorAll('.vision-panel[data-type=images] img')];
  return s.length > 0 && s.every((i) => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0); }"""


def _check_vis(pg, expected_images: int) -> None:
    pg.wait_for_function(ALL_DRAWN)
    assert pg.locator(".vision-panel[data-type=images] img").count() == expected_images
    assert pg.locator(".vision-panel[data-type=curves] svg.curves").count() == 3  # edges, gratings, curves
    assert pg.locator(".vision-panel[data-type=curves] svg.curves path.series").count() >= 1 + 6 + 6


def test_the_vis_commands_output_draws_in_the_report_and_the_viewer(vis_dir, browser):
    from mechscope import artifacts as A

    v = A.read_artifacts(vis_dir).model("zoo:fmnist-cnn-quick").vision("conv2-ch1")
    n = sum(len(p.get("images", [])) for p in v["panels"])
    ctx, pg = _page(browser, offline=True)
    pg.goto((vis_dir / "report.html").as_uri())
    _check_vis(pg, n)
    SHOTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(SHOTS / "report-vis.png"), full_page=True)
    ctx.close()
    assert pg.errors == []
    with serving(vis_dir) as port:
        ctx, pg = _page(browser)
        pg.goto(f"http://127.0.0.1:{port}/")  # a directory of vis output opens on its Vision tab
        _check_vis(pg, n)
        assert pg.locator("#tabs a[data-tab=vision].active").count() == 1
        ctx.close()
    assert pg.errors == []
