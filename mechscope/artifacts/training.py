"""training.json: metric curves over training steps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .schema import header, plain, write_json


class TrainingWriter:
    """`ModelWriter.training` (a mixin: the writer supplies `path`)."""

    path: Path

    def training(self, metrics: Mapping[str, Sequence[tuple[int, float]]], run: str = "",
                 checkpoints: Sequence[int] = (), config: Mapping[str, Any] | None = None) -> Path:
        """Write the model's training.json: each metric's (step, value) curve, the checkpoint steps and the
        config; returns its path."""
        curves = {str(k): [[int(s), plain(float(v), 6)] for s, v in pts] for k, pts in metrics.items()}
        obj = {**header("training"), "run": run, "metrics": curves, "checkpoints": [int(s) for s in checkpoints],
               "config": plain(dict(config or {}))}
        return write_json(self.path / "training.json", obj, indent=1)


def training_from_run(run: Any) -> dict[str, Any]:
    """Keyword arguments of `ModelWriter.training` from a zoo `Run` (its metrics.jsonl log).

    Example::

        from mechscope.artifacts import training_from_run
        from mechscope.zoo import finished_run
        run = finished_run("induction-quick")
        writer.model("zoo:induction-quick").training(**training_from_run(run))
    """
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in run.metrics():
        step = int(row["step"])
        for key, val in row.items():
            if key != "step" and isinstance(val, (int, float)) and not isinstance(val, bool):
                curves.setdefault(key, []).append((step, float(val)))
    cfg = run.config() if run.config_path.is_file() else {}
    return {"metrics": curves, "run": run.path.name, "checkpoints": run.checkpoint_steps(),
            "config": {k: cfg.get(k) for k in ("recipe", "variant", "seed", "hparams") if k in cfg}}
