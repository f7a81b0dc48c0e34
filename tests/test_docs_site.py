"""The built documentation site (site/, `make docs`): offline, and its tutorial pages show their figures.

The pages are opened from disk (file://) in headless Chromium through Playwright, in an offline
browser context: the start page and each tutorial page load without a console error and without a
request that is not a local file, their titles are the site's, and every figure the tutorial's
executed copy displays is drawn (static SVG heatmaps, the views mechscope's renderer draws, images).
The executed copy is the one the site was built from and offers for download (site/tutorials/*.ipynb).
A screenshot of each page is saved in the test's temporary directory (its path is printed).

`make test` builds the site first (up to date after `make docs`, so not built twice) and sets
MECHSCOPE_REQUIRE_SITE=1; elsewhere these tests are skipped when site/ has not been built.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SITE = REPO / "site"
BUILT = SITE / ".mechscope-built"  # the Makefile's stamp: written once `mkdocs build --strict` succeeded

if not BUILT.is_file():
    if os.environ.get("MECHSCOPE_REQUIRE_SITE") == "1":
        raise RuntimeError(f"{SITE} has not been built: `make docs` builds it (`make test` does so first)")
    pytest.skip("the documentation site has not been built (make docs)", allow_module_level=True)


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOOKS = _module("docs_hooks", REPO / "docs" / "hooks.py")
NOTEBOOKS = _module("execute_notebooks", REPO / "scripts" / "execute_notebooks.py")
# (title in the navigation, notebook) for every tutorial, as mkdocs.yml lists them
TUTORIALS = re.findall(r"^\s+- (.+): tutorials/([\w.-]+\.ipynb)\s*$", (REPO / "mkdocs.yml").read_text(), flags=re.M)


def _displayed(notebook: dict) -> dict[str, int]:
    """What the executed notebook displays: static SVGs, views drawn by mechscope's renderer (each
    `window.MS.<view>(...)` call draws at least one SVG) and images."""
    n = {"svg": 0, "views": 0, "images": 0}
    for cell in notebook["cells"]:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            html = "".join(data.get("text/html", ""))
            n["svg"] += len(re.findall(r"<svg[\s>]", html)) + ("image/svg+xml" in data)
            n["views"] += len(re.findall(r"window\.MS\.\w+\(", html))
            n["images"] += sum(1 for k in data if k in ("image/png", "image/jpeg"))
    return n


def test_tutorials_are_all_listed():
    assert [nb for _, nb in TUTORIALS] == [p.name for p in NOTEBOOKS.tutorials()]


def test_the_built_site_loads_nothing_from_the_network():
    assert HOOKS.remote_loads(SITE) == []
    # and no page names a script or stylesheet elsewhere in any other way (e.g. a loader in inline JS)
    remote = re.compile(r"""["'](?:https?:)?//[^"']+\.(?:m?js|css)(?:\?[^"']*)?["']""", re.I)
    found = [f"{p.relative_to(SITE)}: {m.group(0)}"
             for p in SITE.rglob("*.html") for m in remote.finditer(p.read_text())]
    assert found == []


@pytest.mark.parametrize("nav_title, name", TUTORIALS, ids=[nb[:2] for _, nb in TUTORIALS])
def test_tutorial_pages_carry_the_executed_outputs(nav_title, name):
    page = (SITE / "tutorials" / name).with_suffix(".html").read_text()
    executed = json.loads((SITE / "tutorials" / name).read_text())  # the executed copy the page was made from
    shown = _displayed(executed)
    assert len(re.findall(r'class="[^"]*\bjp-OutputArea-output\b', page)) >= 3  # the cells' outputs are there
    assert shown["svg"] + shown["views"] + shown["images"] > 0, f"{name} on the site displays no figure"
    assert len(re.findall(r"window\.MS\.\w+\(", page)) == shown["views"]
    assert '<script src=""' not in page  # the template's empty MathJax loader is removed


# ---- in the browser ------------------------------------------------------------------------------

def _open(browser, path: Path):
    """A page of a fresh offline context at `path` (file://), with the console errors, uncaught
    exceptions and requests it made."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, offline=True)
    requests: list[str] = []
    errors: list[str] = []
    ctx.on("request", lambda r: requests.append(r.url))
    pg = ctx.new_page()
    pg.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    pg.set_default_timeout(10_000)
    pg.goto(path.as_uri())
    pg.wait_for_load_state("load")
    return ctx, pg, requests, errors


# Figures drawn in the notebook outputs: outermost SVGs and images with a nonzero rendered size, and
# every renderer placeholder (div id "ms-...") holding at least one such SVG.
_DRAWN = """() => {
  const outs = [...document.querySelectorAll('.jp-OutputArea-output')];
  const sized = el => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const svgs = outs.flatMap(o => [...o.querySelectorAll('svg')]).filter(s => !s.parentElement.closest('svg'));
  const views = outs.flatMap(o => [...o.querySelectorAll('div[id^="ms-"]')]);
  return {svg: svgs.filter(sized).length,
          views: views.filter(v => [...v.querySelectorAll('svg')].some(sized)).length,
          views_found: views.length,
          images: outs.flatMap(o => [...o.querySelectorAll('img')]).filter(i => i.naturalWidth > 0 && sized(i)).length};
}"""


@pytest.mark.browser
def test_the_start_page_opens_from_disk(browser, tmp_path):
    ctx, pg, requests, errors = _open(browser, SITE / "index.html")
    shot = tmp_path / "site-index.png"
    pg.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert pg.title() == "mechscope"
    assert pg.locator("nav.md-nav").count() > 0 and pg.locator("article h1").count() == 1
    ctx.close()
    assert errors == []
    assert [u for u in requests if not u.startswith("file:")] == []


@pytest.mark.browser
@pytest.mark.parametrize("nav_title, name", TUTORIALS, ids=[nb[:2] for _, nb in TUTORIALS])
def test_a_tutorial_page_shows_its_figures(browser, tmp_path, nav_title, name):
    executed = json.loads((SITE / "tutorials" / name).read_text())  # the executed copy the page was made from
    shown = _displayed(executed)
    ctx, pg, requests, errors = _open(browser, (SITE / "tutorials" / name).with_suffix(".html"))
    drawn = pg.evaluate(_DRAWN)
    shot = tmp_path / f"site-{Path(name).stem}.png"
    pg.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}; displayed {shown}, drawn {drawn}")
    assert pg.title() == f"{nav_title} - mechscope"
    assert shown["svg"] + shown["views"] + shown["images"] > 0, f"{name} displays no figure"
    assert drawn["views_found"] == shown["views"]
    assert drawn["views"] == shown["views"], "a view of mechscope's renderer drew nothing"
    assert drawn["svg"] >= shown["svg"] + shown["views"]
    assert drawn["images"] >= shown["images"]
    ctx.close()
    assert errors == []
    assert [u for u in requests if not u.startswith("file:")] == []
