"""Vision artifacts in a real browser (headless Debian Chromium through Playwright): the viewer's Vision
page and the report draw the image grid with every PNG decoded, and the tuning curves."""

from __future__ import annotations

import pytest

from test_browser import CHROMIUM, SHOTS, playwright_api, serving  # noqa: F401  (the shared set-up)
from test_vision_artifacts import NAME, write_example

pytestmark = [pytest.mark.browser]

LOADED = """(sel) => [...document.querySelectorAll(sel)].map((i) => [i.complete, i.naturalWidth, i.naturalHeight])"""


@pytest.fixture(scope="module")
def vision_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision-artifacts")
    write_example(root)
    return root


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


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
