"""Saved artifacts: a versioned directory that reports, the viewer and notebooks read.

Analyses write plain JSON (and a DuckDB feature store) here; the report and the viewer read only
these files, never the model or the analysis code. Layout (schema version 1):

    out/
      manifest.json                 {"format": "mechscope-artifacts", "schema_version": 1,
                                     "created": ISO time, "models": [{"name", "dir"}]}
      <model dir>/
        overview.json               name, architecture, n_layers, n_heads, d_model, vocab, sites,
                                    params (and free-form "notes")
        attention.json              prompt tokens and pattern[layer][head][query][key] (4 decimals)
        head_roles.json             role -> (layer, head) score matrix, probe settings,
                                    optional causal check: {"metric", "ablation", "values"}
        patching/<name>.json        heatmap: rows, cols, values (null = not measured), metric,
                                    ablation specification, how
        circuits/<name>.json        nodes, edges (source, target, via, score), method, ablation,
                                    faithfulness (a Score's describe()) when given
        training.json               metric curves over steps: {"metrics": {name: [[step, value], ...]}}
        features.json + features.duckdb
                                    the FeatureStore file (mechscope.features.store) and its sets

Every JSON file carries {"kind": ..., "schema_version": 1}. `read_artifacts(dir)` checks the
manifest's version and fails with an `ArtifactError` naming the file and what to do. Writers take
plain Python values and tensors; the `*_from_*` helpers convert mechscope's result objects (looked
up by attribute, so this module imports no analysis). Every write is atomic (temp file + rename).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .core.errors import MechscopeError
from .core.files import write_atomically

SCHEMA_VERSION = 1
FORMAT = "mechscope-artifacts"
DEFAULT_DIR = "out"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@:+-]{0,127}$")
KINDS = ("overview", "attention", "head_roles", "patching", "circuit", "training", "features")


class ArtifactError(MechscopeError):
    """An artifact directory or file that is missing, of another schema version, or malformed."""


# --- names and plain values --------------------------------------------------------------------

def check_name(name: str, what: str = "name") -> str:
    """A name usable as one path component: letters, digits and _ . @ : + -, not starting with '.'."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ArtifactError(f"invalid {what} {name!r}: use letters, digits and _ . @ : + - "
                            "(at most 128 characters, not starting with '.' and without '..')")
    return name


def slug(name: str) -> str:
    """A directory name for a model name ("zoo:induction-quick" -> "zoo_induction-quick")."""
    s = re.sub(r"[^A-Za-z0-9_.+-]", "_", name).strip(".") or "model"
    return check_name(s.replace("..", "_")[:128])


def plain(x: Any, digits: int | None = None) -> Any:
    """Tensors, numpy arrays and numbers as nested lists of Python floats/ints; NaN/inf -> None."""
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().to("cpu")
        x = x.float().tolist() if x.is_floating_point() else x.tolist()
    elif hasattr(x, "tolist") and not isinstance(x, (str, bytes)):  # numpy
        x = x.tolist()
    if isinstance(x, float):
        if not math.isfinite(x):
            return None
        return round(x, digits) if digits is not None else x
    if isinstance(x, Mapping):
        return {str(k): plain(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v, digits) for v in x]
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    return str(x)


def _write(path: Path, obj: dict[str, Any], indent: int | None = None) -> Path:
    text = json.dumps(obj, indent=indent, separators=None if indent else (",", ":"), allow_nan=False)
    write_atomically(path, lambda tmp: tmp.write_text(text + "\n"))
    return path


def _read(path: Path, kind: str) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON ({e}); write the artifacts again") from e
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path} holds a {type(obj).__name__}, expected a JSON object")
    _check_version(path, obj.get("schema_version"))
    if obj.get("kind") != kind:
        raise ArtifactError(f"{path} is a {obj.get('kind')!r} artifact, expected {kind!r}")
    missing = [k for k in REQUIRED[kind] if k not in obj]
    if missing:
        raise ArtifactError(f"{path} lacks the fields {missing} of a {kind} artifact (schema {SCHEMA_VERSION})")
    return obj


def _check_version(path: Path, got: Any) -> None:
    if got != SCHEMA_VERSION:
        raise ArtifactError(f"{path} has artifact schema version {got!r}, but this mechscope reads version "
                            f"{SCHEMA_VERSION}; write the artifacts again with this version of mechscope "
                            "(or open them with the version that wrote them)")


REQUIRED: dict[str, tuple[str, ...]] = {
    "overview": ("name", "architecture", "n_layers", "n_heads", "d_model", "vocab", "sites", "params"),
    "attention": ("tokens", "patterns"),
    "head_roles": ("roles", "n_layers", "n_heads"),
    "patching": ("name", "rows", "cols", "values", "metric", "ablation"),
    "circuit": ("name", "method", "nodes", "edges", "ablation"),
    "training": ("metrics",),
    "features": ("store",),
}


def _header(kind: str) -> dict[str, Any]:
    return {"kind": kind, "schema_version": SCHEMA_VERSION}


def spec_text(spec: Any) -> str:
    """An ablation specification as one line: an AblationSpec, its describe() dict, or text."""
    if spec is None:
        return "unspecified"
    if isinstance(spec, str):
        return spec
    if hasattr(spec, "describe"):
        spec = spec.describe()
    if isinstance(spec, Mapping):
        return ", ".join(f"{k}={v}" for k, v in spec.items() if v is not None)
    return str(spec)


# --- the writer --------------------------------------------------------------------------------

class ArtifactWriter:
    """Writes one artifact directory: `manifest.json` and a directory per model.

        w = ArtifactWriter("out")
        m = w.model("zoo:induction-quick")        # a ModelWriter
        m.overview(architecture="TinyTransformer", n_layers=2, ...)
        m.attention(tokens, patterns)
    """

    def __init__(self, root: str | Path = DEFAULT_DIR):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if (self.root / "manifest.json").is_file():
            self.manifest = _read_manifest(self.root)
        else:
            self.manifest = {"format": FORMAT, "schema_version": SCHEMA_VERSION,
                             "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "models": []}
            self._save()

    def _save(self) -> None:
        self.manifest["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        _write(self.root / "manifest.json", self.manifest, indent=2)

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


class ModelWriter:
    """Writes the artifacts of one model (see the module docstring for each file)."""

    def __init__(self, parent: ArtifactWriter, name: str, path: Path):
        self.parent, self.name, self.path = parent, name, path
        self.path.mkdir(parents=True, exist_ok=True)

    def overview(self, *, architecture: str, n_layers: int, n_heads: int, d_model: int, vocab: int,
                 sites: int, params: int, notes: Mapping[str, Any] | None = None, **extra: Any) -> Path:
        obj = {**_header("overview"), "name": self.name, "architecture": str(architecture),
               "n_layers": int(n_layers), "n_heads": int(n_heads), "d_model": int(d_model), "vocab": int(vocab),
               "sites": int(sites), "params": int(params), "notes": plain(dict(notes or {})),
               **plain(extra)}
        return _write(self.path / "overview.json", obj, indent=2)

    def attention(self, tokens: Sequence[str], patterns: Any, prompt: str | None = None) -> Path:
        """`patterns`: (layer, head, query, key) for one prompt of len(tokens) tokens."""
        pats = plain(patterns, 4)
        toks = [str(t) for t in tokens]
        if not pats or not isinstance(pats[0], list) or not isinstance(pats[0][0], list):
            raise ArtifactError("attention patterns must be (layer, head, query, key)")
        for layer in pats:
            for head in layer:
                if len(head) != len(toks) or any(len(row) != len(toks) for row in head):
                    raise ArtifactError(f"attention patterns must be (layer, head, {len(toks)}, {len(toks)}) for "
                                        f"{len(toks)} tokens")
        obj = {**_header("attention"), "prompt": prompt, "tokens": toks, "n_layers": len(pats),
               "n_heads": len(pats[0]), "patterns": pats}
        return _write(self.path / "attention.json", obj)

    def head_roles(self, roles: Mapping[str, Any], probe: Mapping[str, Any] | None = None,
                   causal: Mapping[str, Any] | None = None) -> Path:
        """`roles`: role -> (layer, head) scores. `causal` (optional): {"metric", "ablation",
        "values": (layer, head)} — e.g. the metric's change when each head is ablated."""
        mats = {str(k): plain(v, 4) for k, v in roles.items()}
        if not mats:
            raise ArtifactError("head_roles needs at least one role")
        shapes = {(len(m), len(m[0]) if m else 0) for m in mats.values()}
        if len(shapes) != 1:
            raise ArtifactError(f"every role's score matrix must be (layer, head) of one shape, got {shapes}")
        (n_layers, n_heads), = shapes
        c = None
        if causal is not None:
            c = {"metric": str(causal.get("metric", "")), "ablation": spec_text(causal.get("ablation")),
                 "values": plain(causal["values"], 4)}
        obj = {**_header("head_roles"), "roles": mats, "n_layers": n_layers, "n_heads": n_heads,
               "probe": plain(dict(probe or {})), "causal": c}
        return _write(self.path / "head_roles.json", obj)

    def patching(self, name: str, rows: Sequence[str], cols: Sequence[str], values: Any, *, metric: str,
                 ablation: Any, title: str = "", how: Mapping[str, Any] | None = None,
                 normalised: bool = True) -> Path:
        vals = plain(values, 4)
        if len(vals) != len(rows) or any(len(r) != len(cols) for r in vals):
            raise ArtifactError(f"patching values must be ({len(rows)} rows, {len(cols)} cols)")
        obj = {**_header("patching"), "name": check_name(name, "patching name"), "title": title or name,
               "rows": [str(r) for r in rows], "cols": [str(c) for c in cols], "values": vals,
               "metric": str(metric), "ablation": spec_text(ablation), "normalised": bool(normalised),
               "how": plain(dict(how or {}))}
        return _write(self.path / "patching" / f"{name}.json", obj, indent=1)

    def circuit(self, name: str, nodes: Sequence[Mapping[str, Any]], edges: Sequence[Mapping[str, Any]], *,
                method: str, ablation: Any, faithfulness: Any = None, how: Mapping[str, Any] | None = None,
                n_edges_total: int | None = None) -> Path:
        """`nodes`: {"id", "layer" (-1 input ... n_layers output), "type" (input|head|mlp|output),
        "head"?}; `edges`: {"source", "target", "score", "via"?} with ids of `nodes`."""
        ids = {str(n["id"]) for n in nodes}
        bad = [e for e in edges if str(e["source"]) not in ids or str(e["target"]) not in ids]
        if bad:
            raise ArtifactError(f"circuit {name!r}: edges {bad[:3]} join nodes that are not listed")
        if faithfulness is not None and hasattr(faithfulness, "describe"):
            faithfulness = faithfulness.describe()
        obj = {**_header("circuit"), "name": check_name(name, "circuit name"), "method": str(method),
               "ablation": spec_text(ablation), "how": plain(dict(how or {})),
               "nodes": [plain(dict(n)) for n in nodes],
               "edges": [plain(dict(e), 6) for e in edges], "faithfulness": plain(faithfulness),
               "n_edges_total": n_edges_total}
        return _write(self.path / "circuits" / f"{name}.json", obj, indent=1)

    def training(self, metrics: Mapping[str, Sequence[tuple[int, float]]], run: str = "",
                 checkpoints: Sequence[int] = (), config: Mapping[str, Any] | None = None) -> Path:
        curves = {str(k): [[int(s), plain(float(v), 6)] for s, v in pts] for k, pts in metrics.items()}
        obj = {**_header("training"), "run": run, "metrics": curves, "checkpoints": [int(s) for s in checkpoints],
               "config": plain(dict(config or {}))}
        return _write(self.path / "training.json", obj, indent=1)

    def features(self, store_path: str | Path, copy: bool = True) -> Path:
        """Register a FeatureStore file (copied into the model directory as features.duckdb)."""
        src = Path(store_path)
        if not src.is_file():
            raise ArtifactError(f"{src} does not exist; build a FeatureStore there first")
        target = self.path / "features.duckdb"
        if copy and src.resolve() != target.resolve():
            write_atomically(target, lambda tmp: shutil.copyfile(src, tmp))
            ref = target.name
        else:
            ref = target.name if src.resolve() == target.resolve() else str(src.resolve())
        sets = []
        try:
            from .features.store import FeatureStore
            with FeatureStore(self.path / ref if not Path(ref).is_absolute() else ref, read_only=True) as st:
                sets = [s["set_id"] for s in st.sets()]
        except Exception as e:  # noqa: BLE001 - the file is checked again by readers
            raise ArtifactError(f"{src} is not a readable feature store: {e}") from e
        obj = {**_header("features"), "store": ref, "sets": sets}
        return _write(self.path / "features.json", obj, indent=2)


# --- helpers converting result objects -------------------------------------------------------

def overview_from_model(model: Any, name: str | None = None, **notes: Any) -> dict[str, Any]:
    """Keyword arguments of `ModelWriter.overview` read off a mechscope adapter."""
    module = getattr(model, "module", None) or getattr(model, "model", None)
    params = sum(p.numel() for p in module.parameters()) if hasattr(module, "parameters") else 0
    w = model.weights()
    return {"architecture": type(module).__name__ if module is not None else type(model).__name__,
            "n_layers": int(model.n_layers), "n_heads": int(model.n_heads), "d_model": int(w.W_E.shape[1]),
            "vocab": int(w.W_E.shape[0]), "sites": len(list(model.sites())), "params": int(params),
            "notes": notes}


def roles_from_head_roles(roles: Any) -> dict[str, Any]:
    """Keyword arguments of `ModelWriter.head_roles` from a `HeadRoles`."""
    names = ("previous_token", "duplicate_token", "induction", "bos")
    return {"roles": {r: getattr(roles, r) for r in names if hasattr(roles, r)},
            "probe": {"n": roles.n, "batch": roles.batch, "seed": roles.seed,
                      "probe": "repeated random tokens"}}


def heatmap_from_patching(result: Any, tokens: Sequence[str] | None = None, normalised: bool = True,
                          metric: str | None = None) -> dict[str, Any]:
    """Keyword arguments of `ModelWriter.patching` from a `PatchingResult` (sites x heads when
    positions were patched together, sites[.heads] x positions otherwise)."""
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


def _node_of(node: Any, n_layers: int) -> dict[str, Any]:
    site = node.site
    kind = getattr(site.kind, "value", str(site.kind))
    if kind == "resid_pre" and site.layer == 0 and node.head is None:
        return {"id": "input", "type": "input", "layer": -1}
    if kind == "logits":
        return {"id": "output", "type": "output", "layer": n_layers}
    if kind in ("attn.z", "z") or (kind.startswith("attn") and node.head is not None):
        return {"id": f"a{site.layer}.{node.head}", "type": "head", "layer": site.layer, "head": node.head}
    return {"id": f"m{site.layer}", "type": "mlp", "layer": site.layer}


def circuit_from_edges(scores: Any = None, circuit: Any = None, k: int = 100, faithfulness: Any = None,
                       method: str | None = None, n_layers: int | None = None) -> dict[str, Any]:
    """Keyword arguments of `ModelWriter.circuit` from `EdgeScores` (its top-k edges by |score|,
    or the edges of `circuit` with their scores) and/or a `Circuit` (scores then None)."""
    if scores is None and circuit is None:
        raise ArtifactError("give EdgeScores, a Circuit, or both")
    graph = getattr(scores, "graph", None)
    L = n_layers if n_layers is not None else (graph.n_layers if graph is not None else None)
    if circuit is not None:
        if scores is not None:
            vals = scores.values.tolist()
            pairs = [(e, vals[graph.index(e)]) for e in circuit]
        else:
            pairs = [(e, None) for e in circuit]
    else:
        pairs = scores.top(k)
    if L is None:
        L = 1 + max((e.sender.site.layer or 0) for e, _ in pairs) if pairs else 1
    nodes: dict[str, dict[str, Any]] = {}
    edges = []
    for e, v in pairs:
        s = _node_of(e.sender, L)
        recv = e.receiver
        kind = getattr(recv.site.kind, "value", str(recv.site.kind))
        if kind in ("attn.q_in", "attn.k_in", "attn.v_in"):
            t = {"id": f"a{recv.site.layer}.{recv.head}", "type": "head", "layer": recv.site.layer,
                 "head": recv.head}
            via = kind.split(".")[1][0]
        elif kind == "mlp_in":
            t, via = {"id": f"m{recv.site.layer}", "type": "mlp", "layer": recv.site.layer}, None
        else:
            t, via = _node_of(recv, L), None
        nodes.setdefault(s["id"], s)
        nodes.setdefault(t["id"], t)
        edges.append({"source": s["id"], "target": t["id"], "via": via, "score": v})
    how = dict(getattr(scores, "how", {}) or {})
    ablation = {k: how[k] for k in ("ablation", "reference", "level", "positions", "direction", "ablated")
                if k in how} or "unspecified"
    return {"nodes": list(nodes.values()), "edges": edges,
            "method": method or how.get("method", getattr(circuit, "name", "") or "circuit"),
            "ablation": ablation, "faithfulness": faithfulness, "how": how,
            "n_edges_total": graph.n_edges if graph is not None else len(edges)}


def training_from_run(run: Any) -> dict[str, Any]:
    """Keyword arguments of `ModelWriter.training` from a zoo `Run` (its metrics.jsonl log)."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in run.metrics():
        step = int(row["step"])
        for key, val in row.items():
            if key != "step" and isinstance(val, (int, float)) and not isinstance(val, bool):
                curves.setdefault(key, []).append((step, float(val)))
    cfg = run.config() if run.config_path.is_file() else {}
    return {"metrics": curves, "run": run.path.name, "checkpoints": run.checkpoint_steps(),
            "config": {k: cfg.get(k) for k in ("recipe", "variant", "seed", "hparams") if k in cfg}}


# --- the reader --------------------------------------------------------------------------------

def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / "manifest.json"
    if not root.is_dir():
        raise ArtifactError(f"{root} is not a directory of mechscope artifacts (it does not exist)")
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{root} has no manifest.json: it is not a mechscope artifact directory "
                            "(write one with mechscope.artifacts.ArtifactWriter, or `make demo`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a mechscope artifact manifest (format {obj.get('format')!r})"
                            if isinstance(obj, dict) else f"{path} is not a JSON object")
    _check_version(path, obj.get("schema_version"))
    if not isinstance(obj.get("models"), list):
        raise ArtifactError(f"{path} has no list of models")
    for m in obj["models"]:
        if not isinstance(m, dict) or "name" not in m or "dir" not in m:
            raise ArtifactError(f"{path}: every model entry needs a name and a dir, got {m!r}")
        check_name(m["dir"], f"model directory in {path}")
    return obj


class ModelArtifacts:
    """Read access to one model's artifacts (each file read, checked and parsed on demand)."""

    def __init__(self, root: "Artifacts", name: str, path: Path):
        self.root, self.name, self.path = root, name, path

    def _opt(self, file: str, kind: str) -> dict[str, Any] | None:
        p = self.path / file
        return _read(p, kind) if p.is_file() else None

    def overview(self) -> dict[str, Any] | None:
        return self._opt("overview.json", "overview")

    def attention(self) -> dict[str, Any] | None:
        return self._opt("attention.json", "attention")

    def head_roles(self) -> dict[str, Any] | None:
        return self._opt("head_roles.json", "head_roles")

    def training(self) -> dict[str, Any] | None:
        return self._opt("training.json", "training")

    def _names(self, sub: str) -> list[str]:
        d = self.path / sub
        if not d.is_dir():
            return []
        return sorted(p.stem for p in d.glob("*.json") if _NAME.match(p.stem) and not p.is_symlink())

    def patching_names(self) -> list[str]:
        return self._names("patching")

    def circuit_names(self) -> list[str]:
        return self._names("circuits")

    def patching(self, name: str) -> dict[str, Any]:
        return _read(self.root.safe_path(self.path / "patching", f"{check_name(name)}.json"), "patching")

    def circuit(self, name: str) -> dict[str, Any]:
        return _read(self.root.safe_path(self.path / "circuits", f"{check_name(name)}.json"), "circuit")

    def features_info(self) -> dict[str, Any] | None:
        return self._opt("features.json", "features")

    def features_path(self) -> Path | None:
        """The FeatureStore file, or None when the model has no features."""
        info = self.features_info()
        if info is None:
            return None
        ref = Path(info["store"])
        p = ref if ref.is_absolute() else self.root.safe_path(self.path, info["store"])
        if not p.is_file():
            raise ArtifactError(f"{self.path / 'features.json'} names the feature store {p}, which does not exist")
        return p

    def open_features(self):
        """The FeatureStore, opened read-only (close it, or use it in a `with`)."""
        from .features.store import FeatureStore

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
                "patching": self.patching_names(), "circuits": self.circuit_names()}


class Artifacts:
    """A checked artifact directory: `models()` and `model(name)`."""

    def __init__(self, root: str | Path = DEFAULT_DIR):
        self.root = Path(root).resolve()
        self.manifest = _read_manifest(self.root)

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
        return [m["name"] for m in self.manifest["models"]]

    def models(self) -> list[ModelArtifacts]:
        return [self.model(n) for n in self.model_names()]

    def model(self, name: str) -> ModelArtifacts:
        for m in self.manifest["models"]:
            if m["name"] == name or m["dir"] == name:
                return ModelArtifacts(self, m["name"], self.safe_path(self.root, m["dir"]))
        raise ArtifactError(f"no model {name!r} in {self.root}; models: {', '.join(self.model_names()) or 'none'}")


def read_artifacts(root: str | Path = DEFAULT_DIR) -> Artifacts:
    """Open an artifact directory, checking its manifest and schema version."""
    return Artifacts(root)


def load_all(root: str | Path = DEFAULT_DIR, max_feature_pages: int = 64) -> dict[str, Any]:
    """Every artifact as one plain dict (what the static report embeds); features as page data."""
    arts = read_artifacts(root)
    out = {"manifest": arts.manifest, "models": []}
    for m in arts.models():
        entry: dict[str, Any] = {"name": m.name, "dir": m.path.name, "overview": m.overview(),
                                 "attention": m.attention(), "head_roles": m.head_roles(),
                                 "training": m.training(),
                                 "patching": [m.patching(n) for n in m.patching_names()],
                                 "circuits": [m.circuit(n) for n in m.circuit_names()], "features": None}
        if m.features_info() is not None:
            entry["features"] = features_snapshot(m, max_feature_pages)
        out["models"].append(entry)
    return out


def feature_rows(store: Any, set_id: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The rows of a feature set, each with its first explanation and held-out correlation."""
    feats = store.features(set_id)[:limit]
    expl = {r[0]: (r[1], r[2]) for r in store.con.execute(
        "SELECT feature, explanation, corr FROM explanations WHERE set_id = ? AND rank = 0", [set_id]).fetchall()}
    for f in feats:
        f["explanation"], f["corr"] = expl.get(f["feature"], (None, None))
    return feats


def features_snapshot(m: ModelArtifacts, max_pages: int = 64) -> dict[str, Any]:
    """Feature sets with their feature rows and the full pages of the `max_pages` features of
    largest activation per set (what the static report embeds)."""
    sets = []
    with m.open_features() as st:
        for s in st.sets():
            feats = feature_rows(st, s["set_id"])
            live = sorted((f for f in feats if f["n_active"]), key=lambda f: -(f["max_act"] or 0))[:max_pages]
            pages = [plain(st.page(s["set_id"], f["feature"]), 4) for f in live]
            sets.append({"set": plain(s), "features": plain(feats, 4), "pages": pages})
    return {"sets": sets}


__all__ = ["ArtifactError", "ArtifactWriter", "Artifacts", "ModelArtifacts", "ModelWriter", "SCHEMA_VERSION",
           "circuit_from_edges", "check_name", "feature_rows", "features_snapshot", "heatmap_from_patching", "load_all",
           "overview_from_model", "plain", "read_artifacts", "roles_from_head_roles", "slug", "spec_text", "training_from_run"]
