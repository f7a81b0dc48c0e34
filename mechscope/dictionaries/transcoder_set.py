"""A transcoder set: stand-ins for the MLPs of several layers of one model, in one directory.

    manifest.json             format, kind ("per-layer" or "clt"), model name and weight fingerprint
                              (`store.model_fingerprint`), layers, each layer's input and output
                              site, d_model (input width), d_out, d_latent (latents per layer), k,
                              architecture, skip, training (tokens, batch, seconds), per-layer
                              held-out FVU / L0 / dead fraction, and the replacement model's
                              next-token KL and loss recovered with every MLP replaced at once
    layer_007.safetensors     per-layer kind: one transcoder's tensors (W_enc, b_enc, W_dec, b_dec,
                              W_skip with a skip connection); its metadata holds the architecture,
                              the full config, the layer and its held-out record
    clt.safetensors           clt kind: the cross-layer transcoder's tensors, metadata alike

Tensor files carry a digest of their tensors (checked when read). `load_transcoder_set(path,
model)` rebuilds every dictionary from its file and, given the model, checks the fingerprint and
every site's width, naming the mismatch and what to do. `TranscoderSet.transcoders` maps layer ->
Transcoder for a per-layer set; `TranscoderSet.clt` is the cross-layer transcoder of a clt set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.run import resolve
from .base import Dictionary
from .clt import CrossLayerTranscoder
from .files import DictionaryFileError, read_json, read_tensors, write_json, write_tensors
from .registry import config_class, dictionary_class
from .store import capture_sites, model_fingerprint

FORMAT = 1
MANIFEST = "manifest.json"
CLT_FILE = "clt.safetensors"
KINDS = ("per-layer", "clt")


def layer_file(layer: int) -> str:
    """The file name of one layer's transcoder in a set's directory."""
    return f"layer_{layer:03d}.safetensors"


@dataclass
class TranscoderSet:
    """Per-layer transcoders (`transcoders`, layer -> Transcoder) or one cross-layer transcoder
    (`clt`) of one model, with the manifest they were saved with.

    Example::

        from mechscope.dictionaries import load_transcoder_set
        tset = load_transcoder_set("runs/textlm-tc", model=ms.load("zoo:textlm"))
        tset.kind, tset.layers                   # "per-layer" or "clt", and the layers it covers
        tset.transcoders[0]                      # layer 0's Transcoder
    """

    manifest: dict[str, Any]
    transcoders: dict[int, Dictionary] = field(default_factory=dict)
    clt: CrossLayerTranscoder | None = None

    @property
    def kind(self) -> str:
        """"per-layer" or "clt", from the manifest."""
        return self.manifest["kind"]

    @property
    def layers(self) -> list[int]:
        """The layers whose MLPs the set replaces."""
        return [int(layer) for layer in self.manifest["layers"]]

    def input_site(self, layer: int) -> str:
        """The name of the site `layer`'s transcoder reads."""
        return self.manifest["sites"][str(layer)]["input"]

    def output_site(self, layer: int) -> str:
        """The name of the site `layer`'s transcoder reconstructs."""
        return self.manifest["sites"][str(layer)]["output"]


def write_dictionary_file(path: Path, dictionary: Dictionary, meta: dict[str, Any]) -> str:
    """One dictionary's tensors with its architecture and config (and `meta`) in the metadata; atomic."""
    info = {"architecture": dictionary.architecture, "config": json.dumps(dictionary.config.to_dict()),
            **{k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}}
    return write_tensors(path, dictionary.state(), info)


def read_dictionary_file(path: Path) -> tuple[Dictionary, dict[str, str]]:
    """The dictionary a `write_dictionary_file` file holds (digest checked) and the file's metadata."""
    tensors, meta = read_tensors(path)
    try:
        arch = meta["architecture"]
        config = config_class(arch).from_dict(json.loads(meta["config"]))
    except (KeyError, ValueError) as e:
        raise DictionaryFileError(f"{path} holds no mechscope dictionary config ({e}); it was not written by "
                                  "write_dictionary_file") from e
    d = dictionary_class(arch)(config)
    want = d.state()
    if want.keys() != tensors.keys():
        raise DictionaryFileError(f"{path} has tensors {sorted(tensors)}, a {arch} with this config has {sorted(want)}")
    for k, v in tensors.items():
        if v.shape != want[k].shape:
            raise DictionaryFileError(f"{path}: {k} has shape {tuple(v.shape)}, the config needs {tuple(want[k].shape)}")
    d.load_state_dict(tensors)
    return d.eval(), meta


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write a set's manifest into the directory `path` atomically."""
    write_json(Path(path) / MANIFEST, manifest)


def load_transcoder_set(path: str | Path, model: Any = None) -> TranscoderSet:
    """The transcoder set in directory `path`; with `model`, checked against it (weights fingerprint,
    sites and widths). Every tensor file's digest is checked.

    Example::

        from mechscope.dictionaries import load_transcoder_set
        tset = load_transcoder_set("runs/textlm-tc", model=ms.load("zoo:textlm"))
    """
    path = Path(path)
    manifest = read_json(path / MANIFEST)
    if manifest.get("format") != FORMAT or manifest.get("kind") not in KINDS:
        raise DictionaryFileError(f"{path / MANIFEST} is not a transcoder set of format {FORMAT} (format "
                                  f"{manifest.get('format')}, kind {manifest.get('kind')})")
    if not manifest.get("trained"):
        raise DictionaryFileError(f"{path} is an unfinished transcoder set (trained layers: "
                                  f"{sorted(manifest.get('per_layer', {}))}); run the same `mechscope dict transcoders` "
                                  "command again to finish it")
    layers = [int(layer) for layer in manifest["layers"]]
    tset = TranscoderSet(manifest)
    if manifest["kind"] == "clt":
        d, _ = read_dictionary_file(path / CLT_FILE)
        if not isinstance(d, CrossLayerTranscoder) or d.config.n_layers != len(layers):
            raise DictionaryFileError(f"{path / CLT_FILE} is not a cross-layer transcoder over the manifest's "
                                      f"{len(layers)} layers")
        tset.clt = d
    else:
        for layer in layers:
            tset.transcoders[layer], _ = read_dictionary_file(path / layer_file(layer))
    if model is not None:
        check_model(tset, model, path)
    return tset


def load_finished_layers(path: str | Path, model: Any, layers: list[int] | None = None) -> dict[int, Dictionary]:
    """layer -> transcoder of a per-layer set that may still be training: `layers`, or (None) every layer it
    has finished. A layer's file is written whole once trained and its digest is checked on reading; the
    set's model fingerprint is checked against `model`'s.

    Example::

        from mechscope.dictionaries.transcoder_set import load_finished_layers
        tcs = load_finished_layers("runs/smollm2-tc", ms.load("smollm2-135m"))   # the layers done so far
    """
    path = Path(path)
    manifest = read_json(path / MANIFEST)
    if manifest.get("model_fingerprint") != model_fingerprint(model.module):
        raise DictionaryFileError(f"{path} was trained on another model than the one given (the set's fingerprint "
                                  f"{manifest.get('model_fingerprint')}, model {manifest.get('model')!r}); "
                                  "load the model it was trained on")
    if layers is None:
        layers = [int(layer) for layer in manifest.get("layers", []) if (path / layer_file(int(layer))).is_file()]
        if not layers:
            raise DictionaryFileError(f"{path}: no layer is trained yet; wait for `mechscope dict transcoders` "
                                      "to write one")
    missing = [layer for layer in layers if not (path / layer_file(layer)).is_file()]
    if missing:
        raise DictionaryFileError(f"{path} has no transcoder yet for layers {missing} (still training, or not "
                                  "among its layers)")
    return {layer: read_dictionary_file(path / layer_file(layer))[0] for layer in layers}


def check_model(tset: TranscoderSet, model: Any, path: Path | str = "the transcoder set") -> None:
    """Refuse a model other than the one the set was trained on, or whose sites have other widths."""
    m = tset.manifest
    got = model_fingerprint(model.module)
    if got != m["model_fingerprint"]:
        raise DictionaryFileError(
            f"{path} was trained on {m.get('model')!r} with weight fingerprint {m['model_fingerprint']}, but this model "
            f"({getattr(model, 'name', type(model.module).__name__)!r}) has fingerprint {got}: load the model it was "
            f"trained on, or train a set for this one (mechscope dict transcoders MODEL --out DIR)")
    valid = set(model.sites())
    sites = []
    for layer in tset.layers:
        for role in ("input", "output"):
            name = m["sites"][str(layer)][role]
            try:
                sites.append(resolve(model, name, valid))
            except Exception as e:  # noqa: BLE001 - the adapter's own error names the site
                raise DictionaryFileError(f"{path}: layer {layer}'s {role} site {name!r} is not a site of this model "
                                          f"({e}); load the model the set was trained on") from e
    got_acts = capture_sites(model, torch.zeros(1, 2, dtype=torch.long), sites)
    for s in sites:
        width = got_acts[s].reshape(*got_acts[s].shape[:2], -1).shape[-1]
        want = m["d_model"] if s.name in {tset.input_site(layer) for layer in tset.layers} else m["d_out"]
        if width != want:
            raise DictionaryFileError(f"{path}: site {s.name} of this model has width {width}, the set was trained "
                                      f"on width {want}; load the model the set was trained on")
