"""The checked reader of an artifact directory: `read_artifacts(dir)` and `load_all(dir)`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .features import features_snapshot
from .schema import DEFAULT_DIR, NAME, ArtifactError, check_name, read_json, read_manifest
from .vision import image_paths, png_data_uri, png_size


class ModelArtifacts:
    """Read access to one model's artifacts (each file read, checked and parsed on demand).

    Example::

        from mechscope.artifacts import read_artifacts
        m = read_artifacts("out").model("zoo:induction-quick")
        m.attention()["patterns"]                # [layer][head][query][key]
        [m.circuit(name) for name in m.circuit_names()]
    """

    def __init__(self, root: "Artifacts", name: str, path: Path):
        self.root, self.name, self.path = root, name, path

    def _opt(self, file: str, kind: str) -> dict[str, Any] | None:
        p = self.root.safe_path(self.path, file)  # a link pointing out of the directory is refused
        return read_json(p, kind) if p.is_file() else None

    def overview(self) -> dict[str, Any] | None:
        """overview.json (the model's shape, recipe and summary figures), or None when it was not written."""
        return self._opt("overview.json", "overview")

    def attention(self) -> dict[str, Any] | None:
        """attention.json (one prompt's attention patterns), or None."""
        return self._opt("attention.json", "attention")

    def head_roles(self) -> dict[str, Any] | None:
        """head_roles.json (role scores per head, with any causal check), or None."""
        return self._opt("head_roles.json", "head_roles")

    def training(self) -> dict[str, Any] | None:
        """training.json (the training curves and checkpoints), or None."""
        return self._opt("training.json", "training")

    def _names(self, sub: str) -> list[str]:
        d = self.path / sub
        if not d.is_dir() or not d.resolve().is_relative_to(self.root.root):
            return []
        return sorted(p.stem for p in d.glob("*.json") if NAME.match(p.stem) and not p.is_symlink())

    def patching_names(self) -> list[str]:
        """The names of the saved patching heatmaps (patching/NAME.json), sorted."""
        return self._names("patching")

    def circuit_names(self) -> list[str]:
        """The names of the saved circuits (circuits/NAME.json), sorted."""
        return self._names("circuits")

    def explanation_names(self) -> list[str]:
        """The names of the model's stored explanations."""
        return self._names("explanations")

    def explanation(self, name: str) -> dict[str, Any]:
        """The stored explanation `name`."""
        return read_json(self.root.safe_path(self.path / "explanations", f"{check_name(name)}.json"), "explanation")

    def patching(self, name: str) -> dict[str, Any]:
        """The patching heatmap `name`; a name that is not a plain file name is refused."""
        return read_json(self.root.safe_path(self.path / "patching", f"{check_name(name)}.json"), "patching")

    def circuit(self, name: str) -> dict[str, Any]:
        """The circuit `name`; a name that is not a plain file name is refused."""
        return read_json(self.root.safe_path(self.path / "circuits", f"{check_name(name)}.json"), "circuit")

    def graph_names(self) -> list[str]:
        """The names of the saved attribution graphs (graphs/NAME.json), sorted."""
        return self._names("graphs")

    def graph(self, name: str) -> dict[str, Any]:
        """The attribution graph `name` (nodes, edges, scores, feature_sets); a name that is not a plain file
        name is refused."""
        return read_json(self.root.safe_path(self.path / "graphs", f"{check_name(name)}.json"), "graph")

    def study_names(self) -> list[str]:
        """The names of the saved studies (studies/NAME.json), sorted."""
        return self._names("studies")

    def study(self, name: str) -> dict[str, Any]:
        """The study `name` (sections of text and tables, checks, graph names)."""
        return read_json(self.root.safe_path(self.path / "studies", f"{check_name(name)}.json"), "study")

    def vision_names(self) -> list[str]:
        """The names of the saved vision artifacts (vision/NAME.json), sorted."""
        return self._names("vision")

    def vision(self, name: str) -> dict[str, Any]:
        """The vision artifact `name` (a channel's or a layer's image grids, curves and tables)."""
        return read_json(self.root.safe_path(self.path / "vision", f"{check_name(name)}.json"), "vision")

    def vision_image(self, name: str, panel: int, index: int) -> Path:
        """The PNG file of image `index` of panel `panel` of vision artifact `name`, checked to be a PNG
        inside the artifact directory; ArtifactError when there is no such image."""
        files = image_paths(self.vision(name))
        if not 0 <= panel < len(files) or not 0 <= index < len(files[panel]):
            raise ArtifactError(f"vision artifact {name!r} has no image {index} in panel {panel}")
        p = self.root.safe_path(self.path, files[panel][index])
        if p.suffix != ".png" or not p.is_file():
            raise ArtifactError(f"the image {files[panel][index]!r} of vision artifact {name!r} is missing")
        png_size(p)
        return p

    def vision_with_images(self, name: str) -> dict[str, Any]:
        """The vision artifact `name` with each image's PNG inline as a data: URI ("src"), for the report."""
        v = self.vision(name)
        for pi, files in enumerate(image_paths(v)):
            for ii, _ in enumerate(files):
                v["panels"][pi]["images"][ii]["src"] = png_data_uri(self.vision_image(name, pi, ii))
        return v

    def features_info(self) -> dict[str, Any] | None:
        """features.json (where the model's FeatureStore is and what it holds), or None."""
        return self._opt("features.json", "features")

    def features_path(self) -> Path | None:
        """The FeatureStore file, or None when the model has no features."""
        info = self.features_info()
        if info is None:
            return None
        ref = info["store"]
        try:
            p = self.root.safe_path(self.path, ref) if isinstance(ref, str) else None
        except ArtifactError:
            p = None
        if p is None:
            raise ArtifactError(f"{self.path / 'features.json'} names the feature store {ref!r}, which is not a file "
                                "inside the artifact directory; register the store again with "
                                "ModelWriter.features(path), which copies it in")
        if not p.is_file():
            raise ArtifactError(f"{self.path / 'features.json'} names the feature store {ref!r}, which does not exist")
        return p

    def open_features(self):
        """The FeatureStore, opened read-only (close it, or use it in a `with`)."""
        from ..features.store import FeatureStore

        p = self.features_path()
        if p is None:
            raise ArtifactError(f"model {self.name!r} has no features in {self.path}")
        return FeatureStore(p, read_only=True)

    def summary(self) -> dict[str, Any]:
        """Which sections this model has."""
        return {"name": self.name, "dir": self.path.name,
                "overview": (self.path / "overview.json").is_file(),
                "attention": (self.path / "attention.json").is_file(),
                "head_roles": (self.path / "head_roles.json").is_file(),
                "training": (self.path / "training.json").is_file(),
                "features": (self.path / "features.json").is_file(),
                "patching": self.patching_names(), "circuits": self.circuit_names(), "graphs": self.graph_names(),
                "explanations": self.explanation_names(), "vision": self.vision_names(),
                "studies": self.study_names()}


class Artifacts:
    """A checked artifact directory: `models()` and `model(name)`.

    Example::

        from mechscope.artifacts import read_artifacts
        arts = read_artifacts("out")             # an Artifacts
        arts.model_names()
        arts.model("zoo:induction-quick").overview()
    """

    def __init__(self, root: str | Path = DEFAULT_DIR):
        self.root = Path(root).resolve()
        self.manifest = read_manifest(self.root)
        for m in self.manifest["models"]:  # a model directory linked out of the directory is refused now
            self.safe_path(self.root, m["dir"])

    def safe_path(self, base: Path, name: str) -> Path:
        """`base / name`, refused unless it stays inside the artifact directory after resolving
        symlinks (no '..', no absolute paths, no links pointing out)."""
        if not name or "\x00" in name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise ArtifactError(f"invalid artifact path {name!r}")
        p = (base / name).resolve()
        if not p.is_relative_to(self.root):
            raise ArtifactError(f"artifact path {name!r} leaves the artifact directory")
        return p

    def model_names(self) -> list[str]:
        """The names of the models in the manifest, in its order."""
        return [m["name"] for m in self.manifest["models"]]

    def models(self) -> list[ModelArtifacts]:
        """Every model's artifacts, in the manifest's order."""
        return [self.model(n) for n in self.model_names()]

    def model(self, name: str) -> ModelArtifacts:
        """The artifacts of one model, by its name or its directory; an unknown name raises ArtifactError listing the
        others."""
        for m in self.manifest["models"]:
            if m["name"] == name or m["dir"] == name:
                return ModelArtifacts(self, m["name"], self.safe_path(self.root, m["dir"]))
        raise ArtifactError(f"no model {name!r} in {self.root}; models: {', '.join(self.model_names()) or 'none'}")


def read_artifacts(root: str | Path = DEFAULT_DIR) -> Artifacts:
    """Open an artifact directory, checking its manifest and schema version.

    Example::

        from mechscope.artifacts import read_artifacts
        for m in read_artifacts("out").models():
            print(m.name, m.summary())
    """
    return Artifacts(root)


def load_all(root: str | Path = DEFAULT_DIR, max_feature_pages: int = 64) -> dict[str, Any]:
    """Every artifact as one plain dict (what the static report embeds); features as page data.

    Example::

        from mechscope.artifacts import load_all
        data = load_all("out")                   # plain dicts and lists, ready for json.dumps
    """
    arts = read_artifacts(root)
    out = {"manifest": arts.manifest, "models": []}
    for m in arts.models():
        entry: dict[str, Any] = {"name": m.name, "dir": m.path.name, "overview": m.overview(),
                                 "attention": m.attention(), "head_roles": m.head_roles(),
                                 "training": m.training(),
                                 "patching": [m.patching(n) for n in m.patching_names()],
                                 "circuits": [m.circuit(n) for n in m.circuit_names()], "features": None,
                                 "explanations": [m.explanation(n) for n in m.explanation_names()],
                                 "vision": [m.vision_with_images(n) for n in m.vision_names()],
                                 "studies": [m.study(n) for n in m.study_names()]}
        if m.features_info() is not None:
            entry["features"] = features_snapshot(m, max_feature_pages)
        out["models"].append(entry)
    return out

