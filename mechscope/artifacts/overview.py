"""overview.json: what the model is (architecture, sizes, free-form notes)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .schema import header, plain, write_json


class OverviewWriter:
    """`ModelWriter.overview` (a mixin: the writer supplies `name` and `path`)."""

    name: str
    path: Path

    def overview(self, *, architecture: str, n_layers: int, n_heads: int, d_model: int, vocab: int,
                 sites: int, params: int, notes: Mapping[str, Any] | None = None, **extra: Any) -> Path:
        """Write the model's overview.json: architecture, sizes, site and parameter counts, notes and any extra
        fields; returns its path."""
        obj = {**header("overview"), "name": self.name, "architecture": str(architecture),
               "n_layers": int(n_layers), "n_heads": int(n_heads), "d_model": int(d_model), "vocab": int(vocab),
               "sites": int(sites), "params": int(params), "notes": plain(dict(notes or {})),
               **plain(extra)}
        return write_json(self.path / "overview.json", obj, indent=2)


def overview_from_model(model: Any, name: str | None = None, **notes: Any) -> dict[str, Any]:
    """Keyword arguments of `ModelWriter.overview` read off a mechscope adapter.

    Example::

        from mechscope.artifacts import overview_from_model
        kw = overview_from_model(ms.load("zoo:induction-quick"), trained_steps=3000)
        writer.model("zoo:induction-quick").overview(**kw)
    """
    module = getattr(model, "module", None) or getattr(model, "model", None)
    params = sum(p.numel() for p in module.parameters()) if hasattr(module, "parameters") else 0
    w = model.weights()
    return {"architecture": type(module).__name__ if module is not None else type(model).__name__,
            "n_layers": int(model.n_layers), "n_heads": int(model.n_heads), "d_model": int(w.W_E.shape[1]),
            "vocab": int(w.W_E.shape[0]), "sites": len(list(model.sites())), "params": int(params),
            "notes": notes}
