"""Reading the transcoders of a graph from a directory, with errors that name the file at fault.

Two layouts are read:
- a transcoder set (`manifest.json` + `layer_LLL.safetensors`, as `mechscope dict transcoders`
  writes): read with `dictionaries.load_transcoder_set`, which checks every file's digest and, given
  the model, its weight fingerprint and widths;
- a directory of dictionaries, one per layer in mechscope's (SAELens) layout, each in a folder of
  its own at any depth (`cfg.json` + `sae_weights.safetensors`, as `mechscope dict train --arch
  transcoder` writes); each one's layer is read from the site its config names.
"""

from __future__ import annotations

from pathlib import Path

from typing import Any

from ..core.site import Site
from ..dictionaries.files import DictionaryFileError
from ..dictionaries.saelens import load
from ..dictionaries.transcoder_set import MANIFEST, load_transcoder_set
from .latents import LatentError


def _from_set(path: Path, adapter: Any) -> dict:
    """layer -> transcoder of a per-layer transcoder set."""
    try:
        tset = load_transcoder_set(path, adapter)
    except DictionaryFileError as e:
        raise LatentError(str(e)) from None
    if tset.clt is not None:
        raise LatentError(f"{path} holds a cross-layer transcoder: graph files read per-layer sets (a CLT "
                          "works from Python, as `graphs.LatentLayer`s with one decoder per later layer)")
    return dict(tset.transcoders)


def load_transcoders(path: str | Path, model: str | None = None, adapter: Any = None) -> dict:
    """layer -> transcoder, from the transcoder set at `path` or every dictionary under it (see the
    module). `model` is the model's name (checked against a dictionary's config); `adapter`, the
    wrapped model, is checked against a set's fingerprint and widths.

    Example::

        from mechscope.graphs import load_transcoders
        tcs = load_transcoders("runs/textlm-tc", adapter=ms.load("zoo:textlm"))   # {layer: transcoder}
    """
    path = Path(path)
    if (path / MANIFEST).is_file():
        return _from_set(path, adapter)
    if not path.is_dir():
        raise LatentError(f"{path} is not a directory of transcoders (folders with cfg.json and "
                          "sae_weights.safetensors, as `mechscope dict train --arch transcoder` writes)")
    out: dict = {}
    for cfg in sorted(path.rglob("cfg.json")):
        where = cfg.parent
        try:
            d = load(where)
        except Exception as e:  # a truncated or corrupt file: the reader's own error names what it found
            raise LatentError(f"the transcoder in {where} cannot be read ({type(e).__name__}: {e}); "
                              "train it again or remove that folder") from None
        c = d.config
        if c.site is None or getattr(c, "d_out", None) is None:
            raise LatentError(f"{where} holds a {d.architecture} that names no input site or has no output "
                              "width: not a transcoder of an MLP")
        if model is not None and c.model is not None and c.model != model:
            raise LatentError(f"the transcoder in {where} was trained on {c.model}, not {model}: give the "
                              f"transcoders of {model}")
        layer = Site.parse(c.site).layer
        if layer is None:
            raise LatentError(f"the transcoder in {where} reads {c.site}, which has no layer")
        if layer in out:
            raise LatentError(f"two transcoders for layer {layer} under {path} ({where} and another); keep one")
        out[layer] = d
    if not out:
        raise LatentError(f"no transcoder under {path} (no cfg.json found)")
    return out
