"""studies/<name>.json: a study's findings as text and tables (what it claimed, what it measured, its checks).

A study (`mechscope.studies`) saves its result here in a form the report can draw without
knowing the study: sections, each with a heading, a paragraph and tables (caption, columns, rows
of plain values), then the checks of its result line (name -> target, got, pass) and the names of
the graphs it saved beside it (graphs/<name>.json, shown on the viewer's Graphs page).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .schema import ArtifactError, check_name, header, plain, write_json


def _check_sections(name: str, sections: Sequence[Mapping[str, Any]]) -> None:
    for s in sections:
        if not isinstance(s, Mapping) or not isinstance(s.get("heading"), str):
            raise ArtifactError(f"study {name!r}: every section needs a heading (text), got {s!r:.200}")
        for t in s.get("tables", []):
            cols, rows = t.get("columns"), t.get("rows")
            if not isinstance(cols, list) or not isinstance(rows, list):
                raise ArtifactError(f"study {name!r}, section {s['heading']!r}: a table needs lists of columns "
                                    "and rows")
            bad = [r for r in rows if not isinstance(r, (list, tuple)) or len(r) != len(cols)]
            if bad:
                raise ArtifactError(f"study {name!r}, section {s['heading']!r}: a row has {len(bad[0])} cells "
                                    f"for {len(cols)} columns ({bad[0]!r:.200})")


class StudyWriter:
    """`ModelWriter.study` (a mixin: the writer supplies `path`)."""

    path: Path

    def study(self, name: str, title: str, sections: Sequence[Mapping[str, Any]], *,
              checks: Mapping[str, Mapping[str, Any]] | None = None, graphs: Sequence[str] = (),
              command: str = "") -> Path:
        """Save a study as studies/NAME.json: `sections` is a list of {"heading", "text", "tables": [{"caption",
        "columns", "rows"}]}; `checks` the result line's checks; `graphs` the names of graphs saved with the
        model; `command` how to run the study again.

        Example::

            from mechscope.artifacts import ArtifactWriter
            m = ArtifactWriter("out").model("smollm2-135m")
            m.study("capitals", "Capital cities", [{"heading": "Behaviour", "text": "24 variants",
                    "tables": [{"caption": "accuracy", "columns": ["prompt", "top-1"], "rows": [["...", " Paris"]]}]}])
        """
        check_name(name, "study name")
        _check_sections(name, sections)
        obj = {**header("study"), "name": name, "title": str(title), "sections": plain(list(sections)),
               "checks": plain(dict(checks or {})), "graphs": [check_name(g, "graph name") for g in graphs],
               "command": str(command)}
        d = self.path / "studies"
        d.mkdir(exist_ok=True)
        return write_json(d / f"{name}.json", obj, indent=1)
