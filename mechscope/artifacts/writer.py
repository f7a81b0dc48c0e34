"""The writer of an artifact directory: the manifest, and one `ModelWriter` per model whose
methods (one per artifact kind) live in the module of the file they write."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from .circuits import CircuitWriter
from .explanations import ExplanationWriter
from .features import FeaturesWriter
from .graphs import GraphWriter
from .heads import HeadsWriter
from .overview import OverviewWriter
from .patching import PatchingWriter
from .studies import StudyWriter
from .schema import DEFAULT_DIR, FORMAT, SCHEMA_VERSION, ArtifactError, check_name, read_manifest, slug, write_json
from .training import TrainingWriter
from .vision import VisionWriter


class ArtifactWriter:
    """Writes one artifact directory: `manifest.json` and a directory per model.

        w = ArtifactWriter("out")
        m = w.model("zoo:induction-quick")        # a ModelWriter
        m.overview(architecture="TinyTransformer", n_layers=2, ...)
        m.attention(tokens, patterns)

    Example::

        from mechscope.artifacts import ArtifactWriter, overview_from_model
        model = ms.load("zoo:induction-quick")
        m = ArtifactWriter("out").model("zoo:induction-quick")
        m.overview(**overview_from_model(model))
    """

    def __init__(self, root: str | Path = DEFAULT_DIR):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if (self.root / "manifest.json").is_file():
            self.manifest = read_manifest(self.root)
        else:
            self.manifest = {"format": FORMAT, "schema_version": SCHEMA_VERSION,
                             "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "models": []}
            self._save()

    def _save(self) -> None:
        self.manifest["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json(self.root / "manifest.json", self.manifest, indent=2)

    def model(self, name: str, dir: str | None = None) -> "ModelWriter":
        """The writer of model `name` (registered in the manifest on first use)."""
        if not isinstance(name, str) or not name.strip():
            raise ArtifactError(f"a model needs a non-empty name, got {name!r}")
        for m in self.manifest["models"]:
            if m["name"] == name:
                return ModelWriter(self, name, self.root / m["dir"])
        d = check_name(dir, "model directory") if dir else slug(name)
        if any(m["dir"] == d for m in self.manifest["models"]):
            raise ArtifactError(f"directory {d!r} already belongs to another model; pass dir=")
        self.manifest["models"].append({"name": name, "dir": d})
        self._save()
        return ModelWriter(self, name, self.root / d)

    def forget(self, name: str) -> bool:
        """Take model `name` out of the manifest if nothing was saved for it (its directory is missing or
        empty); True if it was taken out. For a command that registered a model and then refused to
        save anything under it (call it only for a model the command itself added).

        Example::

            w = ArtifactWriter("out")
            m = w.model("zoo:textlm")
            w.forget("zoo:textlm")                  # True: nothing saved under it yet
        """
        for i, m in enumerate(self.manifest["models"]):
            if m["name"] != name:
                continue
            d = self.root / m["dir"]
            if d.is_dir() and any(d.iterdir()):
                return False
            if d.is_dir():
                d.rmdir()
            del self.manifest["models"][i]
            self._save()
            return True
        return False


class ModelWriter(OverviewWriter, HeadsWriter, PatchingWriter, CircuitWriter, TrainingWriter, FeaturesWriter,
                  ExplanationWriter, GraphWriter, VisionWriter, StudyWriter):
    """Writes the artifacts of one model (see the package docstring for each file).

    Example::

        from mechscope.artifacts import ArtifactWriter
        m = ArtifactWriter("out").model("zoo:induction-quick")
        m.attention(["a", "b", "a"], patterns)   # patterns (layer, head, query, key) of one prompt
        m.head_roles({"induction": scores})      # scores (layer, head)
    """

    def __init__(self, parent: ArtifactWriter, name: str, path: Path):
        self.parent, self.name, self.path = parent, name, path
        self.path.mkdir(parents=True, exist_ok=True)
