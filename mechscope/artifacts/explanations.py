"""explanations/<name>.json: a network replaced by code, scored under each ablation (explain-all)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .schema import check_name, header, plain, write_json


class ExplanationWriter:
    """`ModelWriter.explanation` (a mixin: the writer supplies `path`)."""

    path: Path

    def explanation(self, name: str, hypothesis: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]], *,
                    dataset: str = "", figures: Mapping[str, Any] | None = None) -> Path:
        """`hypothesis`: a Hypothesis's describe() (name, claim, lines, numbers, parts); `results`:
        ablation kind -> a ScrubResult's describe() (recovered, losses, parts, groups)."""
        obj = {**header("explanation"), "name": check_name(name, "explanation name"),
               "hypothesis": plain(dict(hypothesis)), "results": {str(k): plain(dict(v)) for k, v in results.items()},
               "dataset": str(dataset), "figures": plain(dict(figures or {}))}
        return write_json(self.path / "explanations" / f"{name}.json", obj, indent=1)
