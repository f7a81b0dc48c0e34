"""features.json + features.duckdb: a FeatureStore file registered with a model, and its rows read
back as the viewer and the report show them."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.files import write_atomically
from .schema import ArtifactError, header, plain, write_json

if TYPE_CHECKING:
    from .reader import ModelArtifacts


class FeaturesWriter:
    """`ModelWriter.features` (a mixin: the writer supplies `path`)."""

    path: Path

    def features(self, store_path: str | Path, copy: bool = True) -> Path:
        """Register a FeatureStore file: copied into the model directory as features.duckdb, or with
        `copy=False` referenced where it is, which must be inside the model directory (readers open
        no file outside the artifact directory)."""
        src = Path(store_path)
        if not src.is_file():
            raise ArtifactError(f"{src} does not exist; build a FeatureStore there first")
        target = self.path / "features.duckdb"
        here = self.path.resolve()
        if copy and src.resolve() != target.resolve():
            write_atomically(target, lambda tmp: shutil.copyfile(src, tmp))
            ref = target.name
        elif src.resolve().is_relative_to(here):
            ref = src.resolve().relative_to(here).as_posix()
        else:
            raise ArtifactError(f"{src} is outside the model directory {self.path}; pass copy=True to copy it in "
                                "(the viewer and the report read only files inside the artifact directory)")
        sets = store_sets(self.path / ref, shown=src)
        obj = {**header("features"), "store": ref, "sets": sets}
        return write_json(self.path / "features.json", obj, indent=2)


def store_sets(path: str | Path, shown: str | Path | None = None) -> list[str]:
    """The names of the feature sets in the FeatureStore file at `path` (named as `shown` in errors)."""
    try:
        from ..features.store import FeatureStore
        with FeatureStore(path, read_only=True) as st:
            return [s["set_id"] for s in st.sets()]
    except Exception as e:  # noqa: BLE001 - the file is checked again by readers
        raise ArtifactError(f"{shown or path} is not a readable feature store: {e}") from e


def feature_rows(store: Any, set_id: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The rows of a feature set, each with its first explanation and held-out correlation.

    Example::

        from mechscope.artifacts import feature_rows
        from mechscope.features import FeatureStore
        with FeatureStore("out/features.duckdb") as store:
            rows = feature_rows(store, "mlp.post.1", limit=20)
    """
    feats = store.features(set_id)[:limit]
    expl = {r[0]: (r[1], r[2]) for r in store.con.execute(
        "SELECT feature, explanation, corr FROM explanations WHERE set_id = ? AND rank = 0", [set_id]).fetchall()}
    for f in feats:
        f["explanation"], f["corr"] = expl.get(f["feature"], (None, None))
    return feats


def features_snapshot(m: "ModelArtifacts", max_pages: int = 64) -> dict[str, Any]:
    """Feature sets with their feature rows and the full pages of the `max_pages` features of
    largest activation per set (what the static report embeds).

    Example::

        from mechscope.artifacts import features_snapshot, read_artifacts
        snap = features_snapshot(read_artifacts("out").model("zoo:textlm"), max_pages=16)
    """
    sets = []
    with m.open_features() as st:
        for s in st.sets():
            feats = feature_rows(st, s["set_id"])
            live = sorted((f for f in feats if f["n_active"]), key=lambda f: -(f["max_act"] or 0))[:max_pages]
            pages = [plain(st.page(s["set_id"], f["feature"]), 4) for f in live]
            sets.append({"set": plain(s), "features": plain(feats, 4), "pages": pages})
    return {"sets": sets}
