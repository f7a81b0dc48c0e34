"""Zoo networks shipped inside the package, so the demo analyses them instead of training them.

    mechscope/zoo/shipped/NAME.safetensors   the final weights of a finished run and one metadata
                                             entry, "mechscope.zoo.shipped": canonical JSON of the
                                             run's config (recipe, variant, seed, hyperparameters,
                                             checkpoint schedule), its metrics log and the SHA-256
                                             digest of its tensors
    mechscope/zoo/shipped/manifest.json      per name: the file, its size, the SHA-256 of its bytes,
                                             and how the run was trained (torch, threads, CPU kernels)

Made by `mechscope zoo train NAME --threads 1`, then `mechscope zoo export NAME`, which writes both
from the finished run in the cache. An export is a pure function of the run (one metadata entry,
sorted JSON), so the same run gives the same bytes; training is deterministic on one CPU setting,
so the same recipe, torch version, thread count and CPU kernels give the same run.

Read by `zoo.network(NAME)` (the demo) and `load("zoo:NAME")` when the cache holds no finished run
of NAME: the file's SHA-256 is checked against the manifest and its config against the recipe's
current settings (a mismatch raises `CheckpointError` naming the file and what to do), then it is
unpacked into `cache_dir()/zoo-shipped/NAME`, a finished run directory with the final weights and
the metrics log but no intermediate checkpoints, whose `done.json` says `"source": "shipped"`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..core.files import digest, write_atomically
from ..core.paths import cache_dir
from .files import CheckpointError, load_tensors, save_tensors, write_json, write_jsonl
from .train import Run

SHIPPED_DIR = Path(__file__).parent / "shipped"
MANIFEST = "manifest.json"
KEY = "mechscope.zoo.shipped"  # the one metadata entry of a shipped file
FORMAT = 1


def unpacked_dir() -> Path:
    """Where shipped networks are unpacked as run directories: `cache_dir()/zoo-shipped`."""
    return cache_dir() / "zoo-shipped"


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file at `path`, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest(directory: Path = SHIPPED_DIR) -> dict[str, dict[str, Any]]:
    """name -> {file, bytes, sha256, trained}; empty when nothing is shipped."""
    path = directory / MANIFEST
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); restore it from the repository") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or not isinstance(obj.get("networks"), dict):
        raise CheckpointError(f"{path} is not a manifest of shipped zoo networks (format {FORMAT})")
    return obj["networks"]


def names(directory: Path = SHIPPED_DIR) -> list[str]:
    """The zoo names shipped in the package."""
    return sorted(manifest(directory))


def is_shipped(name: str, directory: Path = SHIPPED_DIR) -> bool:
    """Whether zoo network `name` is in the shipped manifest of `directory`."""
    return name in manifest(directory)


def read(name: str, directory: Path = SHIPPED_DIR, *, expected_config: dict[str, Any] | None = None
         ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checked contents of a shipped network: (tensors, record with "config" and "metrics").

    Checks, each failing with a `CheckpointError` that names the file: the file exists and its bytes
    have the manifest's SHA-256; it is a readable safetensors file whose tensors match the digest it
    carries; and its config equals `expected_config` (the recipe's current settings) when given.
    """
    entry = manifest(directory).get(name)
    if entry is None:
        raise CheckpointError(f"no zoo network {name!r} is shipped in {directory / MANIFEST}; shipped: "
                              + (", ".join(names(directory)) or "none"))
    path = directory / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"{path} is missing (listed in {directory / MANIFEST}); restore it from the "
                              "repository, or `mechscope demo --retrain` trains the network here")
    got = file_sha256(path)
    if got != entry["sha256"]:
        raise CheckpointError(f"{path} does not match its SHA-256 in {directory / MANIFEST} ({got[:12]}… instead "
                              f"of {entry['sha256'][:12]}…): the file was changed or damaged; restore it from the "
                              "repository, or `mechscope demo --retrain` trains the network here")
    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
        tensors = load_file(str(path))
        record = json.loads(meta[KEY])
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a shipped zoo network ({type(e).__name__}: {e})") from e
    if digest(tensors) != record.get("tensors_sha256"):
        raise CheckpointError(f"{path}: its tensors do not match the digest stored in it")
    if expected_config is not None:
        want = json.loads(json.dumps(expected_config))
        if record.get("config") != want:
            raise CheckpointError(f"{path} was exported from other recipe settings than {name!r} has now "
                                  f"({_difference(record.get('config'), want)}); train it with the current "
                                  f"recipe and export it again (`mechscope zoo train {name} --threads 1` then "
                                  f"`mechscope zoo export {name}`), or run the demo with --retrain")
    return tensors, record


def _difference(old: Any, new: Any) -> str:
    if not isinstance(old, dict) or not isinstance(new, dict):
        return "the file holds no config"
    parts = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if key == "hparams" and isinstance(a, dict) and isinstance(b, dict):
            parts += [f"{k}: {a.get(k)!r} in the file, {b.get(k)!r} in the recipe"
                      for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            parts.append(f"{key} differs" if key == "checkpoints" else f"{key}: {a!r} in the file, {b!r} in the recipe")
    return "; ".join(parts)


def unpack(name: str, expected_config: dict[str, Any], directory: Path = SHIPPED_DIR) -> Run:
    """The shipped network as a finished run directory under `unpacked_dir()`, checked (see `read`)
    at every call and unpacked again when the shipped file changed."""
    entry = manifest(directory).get(name)
    tensors, record = read(name, directory, expected_config=expected_config)
    run = Run(unpacked_dir() / name)
    if run.done:
        try:
            done = json.loads(run.done_path.read_text())
        except (OSError, json.JSONDecodeError):
            done = {}
        if done.get("sha256") == entry["sha256"] and run.model_path.is_file():
            return run
    run.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=run.path.parent))
    try:
        staged = Run(tmp)
        write_json(staged.config_path, record["config"])
        write_jsonl(staged.metrics_path, record["metrics"])
        steps = record["config"]["hparams"]["steps"]
        save_tensors(staged.model_path, tensors, {"step": str(steps), "kind": "model"})
        write_json(staged.done_path, {"steps": steps, "source": "shipped", "file": entry["file"],
                                      "sha256": entry["sha256"], "trained": entry.get("trained")})
        shutil.rmtree(run.path, ignore_errors=True)
        try:
            tmp.rename(run.path)
        except OSError:  # another process unpacked it at the same moment: use theirs if it is this file
            if not (run.done and json.loads(run.done_path.read_text()).get("sha256") == entry["sha256"]):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return run


def export(run: Run, name: str, expected_config: dict[str, Any], directory: Path = SHIPPED_DIR) -> dict[str, Any]:
    """Write the finished `run` as the shipped network `name` into `directory` and list it in the
    manifest; returns its manifest entry. Refuses unfinished runs, runs of other settings than
    `expected_config` (the recipe's current ones) and unpacked shipped copies."""
    if not run.done:
        raise CheckpointError(f"{run.path} is not a finished run; train it first (`mechscope zoo train {name} "
                              "--threads 1`)")
    done = json.loads(run.done_path.read_text())
    if done.get("source") == "shipped":
        raise CheckpointError(f"{run.path} is an unpacked shipped copy, not a run trained here")
    if run.config() != json.loads(json.dumps(expected_config)):
        raise CheckpointError(f"{run.config_path} holds other settings than the recipe of {name!r} has now "
                              f"({_difference(run.config(), expected_config)}); delete {run.path} and train again")
    tensors, _ = load_tensors(run.model_path)
    record = {"format": FORMAT, "name": name, "config": run.config(), "metrics": run.metrics(),
              "tensors_sha256": digest(tensors)}
    path = directory / f"{name}.safetensors"
    # one metadata entry: safetensors writes several in a process-dependent order
    write_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata={KEY: _canonical(record)}))
    entry = {"file": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path),
             "trained": {k: done.get(k) for k in ("torch", "threads", "cpu")}}
    networks = manifest(directory) | {name: entry}
    write_atomically(directory / MANIFEST, lambda tmp: tmp.write_text(
        json.dumps({"format": FORMAT, "networks": dict(sorted(networks.items()))}, indent=2, sort_keys=True) + "\n"))
    return entry


__all__ = ["SHIPPED_DIR", "export", "file_sha256", "is_shipped", "manifest", "names", "read", "unpack",
           "unpacked_dir"]
