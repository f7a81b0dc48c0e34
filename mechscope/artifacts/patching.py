"""patching/<name>.json: an activation-patching heatmap with its metric and ablation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .schema import ArtifactError, check_name, header, plain, spec_text, write_json


class PatchingWriter:
    """`ModelWriter.patching` (a mixin: the writer supplies `path`)."""

    path: Path

    def patching(self, name: str, rows: Sequence[str], cols: Sequence[str], values: Any, *, metric: str,
                 ablation: Any, title: str = "", how: Mapping[str, Any] | None = None,
                 normalised: bool = True) -> Path:
        """Write patching grid `name`: `values` (rows, cols) of `metric` under `ablation`; returns the file's
        path. A grid of another shape raises ArtifactError."""
        vals = plain(values, 4)
        if len(vals) != len(rows) or any(len(r) != len(cols) for r in vals):
            raise ArtifactError(f"patching values must be ({len(rows)} rows, {len(cols)} cols)")
        obj = {**header("patching"), "name": check_name(name, "patching name"), "title": title or name,
               "rows": [str(r) for r in rows], "cols": [str(c) for c in cols], "values": vals,
               "metric": str(metric), "ablation": spec_text(ablation), "normalised": bool(normalised),
               "how": plain(dict(how or {}))}
        return write_json(self.path / "patching" / f"{name}.json", obj, indent=1)


def heatmap_from_patching(result: Any, tokens: Sequence[str] | None = None, normalised: bool = True,
                          metric: str | None = None) -> dict[str, Any]:
    """Keyword arguments of `ModelWriter.patching` from a `PatchingResult` (sites x heads when
    positions were patched together, sites[.heads] x positions otherwise).

    Example::

        from mechscope.artifacts import heatmap_from_patching
        from mechscope.causal import activation_patching
        result = activation_patching(model, clean, corrupt, sites, ld, each_position=False)
        writer.model("zoo:induction-quick").patching("heads", **heatmap_from_patching(result))
    """
    grid = result.normalised() if normalised else result.mean()  # (site, head, position)
    n_sites, n_heads, n_pos = grid.shape
    site_names = [getattr(s, "short", str(s)) for s in result.sites]
    if n_pos == 1:
        rows, cols = site_names, ([f"h{h}" for h in range(n_heads)] if n_heads > 1 else ["all positions"])
        values = grid[:, :, 0]
    else:
        rows = [f"{s}.h{h}" if n_heads > 1 else s for s in site_names for h in range(n_heads)]
        cols = [f"{p}:{tokens[p]}" if tokens else str(p) for p in range(n_pos)]
        values = grid.reshape(n_sites * n_heads, n_pos)
    how = dict(result.how)
    return {"rows": rows, "cols": cols, "values": values,
            "metric": metric or how.get("metric", "metric"), "how": how, "normalised": normalised,
            "ablation": {k: how[k] for k in ("ablation", "direction", "level", "positions", "heads") if k in how}}
