"""MkDocs hooks: the benchmark page's table, the generated API pages, the tutorials' executed copies
and the check that no page loads anything from the network.

The benchmark page's table comes from benchmarks/results/bench.json.

The table is made by `benchmarks/run_all.py`'s `table()`, the function that prints the README's
table (`python benchmarks/run_all.py --table`), so the site and the README show the same numbers
with the machine and date they were measured on. A page places it with the marker
`<!-- bench-table -->`.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
MARKER = "<!-- bench-table -->"


def _script(path: Path):
    """A script of the repository loaded as a module (benchmarks/ and scripts/ are not packages)."""
    spec = importlib.util.spec_from_file_location(f"_mechscope_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_all():
    return _script(REPO / "benchmarks" / "run_all.py")


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace the marker with the table of the committed summary."""
    if MARKER not in markdown:
        return markdown
    run_all = _run_all()
    summary = json.loads(run_all.DEFAULT_OUT.read_text())
    return markdown.replace(MARKER, run_all.table(summary))


# The API reference: one page per package, generated at build time from the package tree so that a
# new module appears without editing a page. Each page shows the package's docstring, then every
# public module (files not starting with "_") with the docstrings of its public members.
API_PACKAGES = ("core", "models", "zoo", "rasp", "causal", "circuits", "dictionaries", "features", "landscape",
                "vision", "dynamics", "diff", "audit", "graphs", "artifacts", "report", "viewer", "replications",
                "studies")


def api_page(package: str) -> str:
    """The Markdown of `api/<package>.md`: mkdocstrings directives for the package and its modules."""
    root = REPO / "mechscope" / package
    lines = [f"# mechscope.{package}", "", f"::: mechscope.{package}",
             "    options:", "      members: false", "      show_root_heading: false", ""]
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if path.name == "__init__.py" or any(part.startswith("_") for part in rel.parts):
            continue
        dotted = ".".join((package, *rel.with_suffix("").parts))
        lines += [f"::: mechscope.{dotted}", ""]
    return "\n".join(lines)


def executed_tutorials(files) -> None:
    """Point every tutorial page at its executed copy (build/notebooks/, written by
    `scripts/execute_notebooks.py`, which `make docs` runs first), so the page shows the cells'
    outputs; the committed notebooks have none. A missing or stale copy fails the build."""
    from mkdocs.exceptions import PluginError

    notebooks = _script(REPO / "scripts" / "execute_notebooks.py")
    for f in files:
        if f.src_uri.startswith("tutorials/") and f.src_uri.endswith(".ipynb"):
            source = DOCS / f.src_uri
            why = notebooks.stale_for_site(source)
            if why:
                raise PluginError(f"{f.src_uri}: the site shows its executed copy, but {why}; execute the "
                                  "notebooks first (`make docs` does: .venv/bin/python scripts/execute_notebooks.py)")
            f.abs_src_path = str(notebooks.executed_path(source))


def on_files(files, config):
    """Add the generated API pages (api/<package>.md) to the site's files and show the tutorials'
    executed copies."""
    from mkdocs.structure.files import File

    for package in API_PACKAGES:
        files.append(File.generated(config, f"api/{package}.md", content=api_page(package)))
    executed_tutorials(files)
    return files


# Nothing may be fetched from the network when the site is read. The notebook pages carry a loader
# for Mermaid diagrams from a public CDN (it would run only for pages with diagrams; the tutorials
# have none): it is removed, and after the build every page is checked for anything loaded from
# elsewhere, which fails the build.
_MERMAID = re.compile(r'<script type="module">\s*document\.addEventListener\("DOMContentLoaded", async \(\) => \{\s*'
                      r'const diagrams = document\.querySelectorAll\("\.jp-Mermaid.*?</script>', re.S)
_REMOTE = re.compile(r"""(?:<script[^>]*\ssrc|<link[^>]*\shref|<img[^>]*\ssrc|<iframe[^>]*\ssrc)\s*=\s*["']?(?:https?:)?//"""
                     r"""|@import\s+(?:url\()?["']?(?:https?:)?//|import\(\s*["'](?:https?:)?//""", re.I)


# The template's MathJax loader has an empty address (no MathJax URL is configured): an element that
# loads nothing and only fires an error event.
_EMPTY_SCRIPT = re.compile(r'<!-- Load mathjax -->\s*<script src="">\s*</script>')


def on_post_page(output: str, page, config) -> str:
    """Drop the notebook template's CDN loader for Mermaid and its empty MathJax loader."""
    return _EMPTY_SCRIPT.sub("", _MERMAID.sub("", output))


def remote_loads(site_dir: Path) -> list[str]:
    """Every page or stylesheet of the built site that would load something from another host."""
    bad = []
    for path in sorted(site_dir.rglob("*")):
        if path.suffix in (".html", ".css") and path.is_file():
            for m in _REMOTE.finditer(path.read_text(errors="replace")):
                bad.append(f"{path.relative_to(site_dir)}: {m.group(0)[:120]}")
    return bad


def on_post_build(config) -> None:
    """Fail the build when a page would fetch anything from the network."""
    from mkdocs.exceptions import PluginError

    bad = remote_loads(Path(config["site_dir"]))
    if bad:
        raise PluginError("the site would load from the network:\n  " + "\n  ".join(bad[:20]))
