"""The package's imports point down its layers, except those ARCHITECTURE.md names, and form no circle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mechscope"
# ARCHITECTURE.md's layers, bottom up; analyses sit side by side and do not import each other
LAYERS = {"core": 0, "models": 1, "zoo": 2, "rasp": 2, "causal": 3, "circuits": 3, "dictionaries": 3,
          "features": 3, "artifacts": 4, "report": 4, "viewer": 4, "cli": 5, "cli_dict": 5, "cli_features": 5,
          "cli_zoo": 5, "cli_diff": 5, "cli_audit": 5, "cli_explain": 5, "cli_graph": 5, "cli_options": 5, "cli_vis": 5, "demo": 5, "studies": 5,
          "replications": 5, "dynamics": 5, "diff": 5, "audit": 5, "graphs": 5, "landscape": 3, "vision": 3}
SIDE_BY_SIDE = {2, 3}  # reference networks and analyses: one part does not import another of its layer


def _imports() -> list[tuple[str, int, str, str]]:
    """(file, line, importing part, imported module) for every import of mechscope by mechscope."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("").parts  # ("mechscope", "causal", "edges")
        package = list(rel[:-1])
        if len(rel) == 2 and rel[1] == "__init__":
            continue  # the package's front door imports what it offers
        part = rel[1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else []))
                targets = [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            out += [(str(path.relative_to(PACKAGE)), node.lineno, part, t) for t in targets
                    if t.startswith("mechscope.")]
    return out


def _part(module: str) -> str:
    return module.split(".")[1]


def test_every_import_pointing_up_is_named_in_architecture_md():
    up = set()
    for file, line, mine, target in _imports():
        theirs = _part(target)
        assert mine in LAYERS and theirs in LAYERS, f"{file}:{line}: {mine} or {theirs} has no layer here"
        if theirs == mine:
            continue
        if LAYERS[theirs] > LAYERS[mine] or (LAYERS[theirs] == LAYERS[mine] and LAYERS[mine] in SIDE_BY_SIDE):
            up.add((file, target))
    doc = (ROOT / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"^- `([\w/]+\.py)` `\w+\._repr_html_` → `([\w.]+)\.\w+`$", doc, re.M))
    assert up == {(f, "mechscope." + t) for f, t in named}
    assert len(up) == 4  # the `_repr_html_` views, and nothing else


def test_the_parts_import_no_circle():
    """Drawn from every import (inside functions too) but the named `_repr_html_` views: no part
    reaches back to one that imports it."""
    views = {("mechscope." + f, t) for f, t in re.findall(r"^- `([\w/]+\.py)` `\w+\._repr_html_` → `([\w.]+)\.\w+`$",
                                                           (ROOT / "ARCHITECTURE.md").read_text(), re.M)}
    parts: dict[str, set[str]] = {}
    for file, _, mine, target in _imports():
        if _part(target) != mine and ("mechscope." + file, target.removeprefix("mechscope.")) not in views:
            parts.setdefault(mine, set()).add(_part(target))
    state: dict[str, str] = {}

    def visit(p: str, path: list[str]) -> None:
        if state.get(p) == "open":
            raise AssertionError("import circle: " + " -> ".join(path + [p]))
        if state.get(p) == "done":
            return
        state[p] = "open"
        for q in sorted(parts.get(p, ())):
            visit(q, path + [p])
        state[p] = "done"

    for p in sorted(parts):
        visit(p, [])
