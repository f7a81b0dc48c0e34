"""The documentation site's sources: notebooks committed clean, pins that agree, generated pages.

The site itself is built by `make docs` (mkdocs build --strict, in .venv-docs); these checks need
only the standard library and mechscope's own files.
"""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebooks_are_committed_without_outputs():
    notebooks = sorted((DOCS / "tutorials").glob("*.ipynb"))
    assert len(notebooks) == 5
    for path in notebooks:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell.get("outputs") == [] and cell.get("execution_count") is None, (path.name, cell["source"][:1])
        assert nb["metadata"]["kernelspec"]["name"] == "python3", path.name


def test_docs_extra_pins_match_the_lock_file():
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["docs"]
    lock = {}
    for line in (DOCS / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            lock[name.lower().replace("_", "-")] = version
    for pin in extra:
        name, version = pin.split("==")
        name = re.sub(r"\[.*\]", "", name).lower()
        assert lock.get(name) == version, f"pyproject's docs extra pins {pin}, docs/requirements.txt has {lock.get(name)}"


def test_every_nav_page_exists_and_every_package_has_an_api_page():
    nav = re.findall(r":\s*([\w./-]+\.(?:md|ipynb))\s*$", (REPO / "mkdocs.yml").read_text(), flags=re.M)
    hooks = _hooks()
    generated = {f"api/{p}.md" for p in hooks.API_PACKAGES}
    missing = [p for p in nav if not (DOCS / p).is_file() and p not in generated]
    assert not missing, missing
    packages = {p.name for p in (REPO / "mechscope").iterdir() if (p / "__init__.py").is_file()}
    assert packages - {"demo"} == set(hooks.API_PACKAGES), packages ^ set(hooks.API_PACKAGES)


def test_api_page_lists_every_public_module():
    page = _hooks().api_page("causal")
    modules = {p.stem for p in (REPO / "mechscope" / "causal").glob("*.py") if not p.stem.startswith("_")}
    assert set(re.findall(r"^::: mechscope\.causal\.(\w+)$", page, flags=re.M)) == modules


def test_benchmark_table_is_the_readmes():
    hooks = _hooks()
    page = hooks.on_page_markdown("before\n<!-- bench-table -->\nafter", None, None, None)
    table = page.split("\n", 1)[1].rsplit("\n", 1)[0]
    assert table.startswith("Measured ") and "| benchmark | check | target | got | pass |" in table
    assert table in (REPO / "README.md").read_text()  # the README shows the same generated table


def test_remote_loads_are_found(tmp_path):
    hooks = _hooks()
    (tmp_path / "ok.html").write_text('<a href="https://example.org/">a link is fine</a><script src="assets/x.js"></script>')
    assert hooks.remote_loads(tmp_path) == []
    (tmp_path / "bad.html").write_text('<script src="https://cdn.example.org/x.js"></script>')
    (tmp_path / "bad.css").write_text('@import url("//fonts.example.org/a.css");')
    assert len(hooks.remote_loads(tmp_path)) == 2


def test_docstring_check_lists_every_missing_name():
    # `make docs` runs interrogate with the floor at 100% and a verbosity that names what lacks a docstring
    settings = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["interrogate"]
    assert settings["fail-under"] == 100 and settings["omit-covered-files"] is True
    recipe = (REPO / "Makefile").read_text().split("\n$(SITE_STAMP): ", 1)[1].split("\n\n", 1)[0]
    assert re.search(r"interrogate -vv mechscope$", recipe, flags=re.M), recipe


def test_executed_notebooks_and_the_built_site_are_never_committed():
    # `make docs` writes the executed tutorials to build/notebooks/ and the site to site/
    ignored = {line.strip() for line in (REPO / ".gitignore").read_text().splitlines()}
    assert {"build/", "site/"} <= ignored
