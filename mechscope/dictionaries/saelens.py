"""Dictionary files in the SAELens layout: a directory with cfg.json and sae_weights.safetensors.

This is also mechscope's own format. `save` writes

    cfg.json                  SAELens's inference config (architecture, d_in, d_sae, dtype, device,
                              apply_b_dec_to_input, normalize_activations, metadata.model_name and
                              metadata.hook_name, k for topk, d_out where it applies) plus a
                              "mechscope" block holding the full config of our class
    sae_weights.safetensors   W_enc (d_in, d_sae), b_enc, W_dec (d_sae, d_out), b_dec, and
                              threshold (d_sae,) for JumpReLU and BatchTopK, W_skip (d_in, d_out)
                              for a transcoder with a skip connection

Architectures map as: relu <-> "standard", topk <-> "topk", jumprelu <-> "jumprelu", and
batchtopk -> "jumprelu" with its single threshold repeated per latent (how SAELens stores a
trained BatchTopK SAE; the outputs outside training are the same). Transcoders (TopK) and
crosscoders have no SAELens class: they are written as "mechscope.transcoder" and
"mechscope.crosscoder", which only mechscope reads. A directory written by SAELens (no
"mechscope" block) loads into the matching class; anything that needs run-time input
normalisation or other SAELens-only machinery fails with a message saying so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .base import Dictionary
from .batchtopk import BatchTopKSAE
from .files import DictionaryFileError, read_json, read_meta, read_tensors, write_json, write_tensors
from .jumprelu import JumpReLUConfig
from .registry import ARCHITECTURES, config_class, dictionary_class
from .relu import ReLUConfig
from .topk import TopKConfig

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
FORMAT = 1
_TO_SAELENS = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}
_DTYPES = {"float32": torch.float32, "torch.float32": torch.float32, "float64": torch.float64,
           "torch.float64": torch.float64, "float16": torch.float16, "torch.float16": torch.float16,
           "bfloat16": torch.bfloat16, "torch.bfloat16": torch.bfloat16}


def save(dictionary: Dictionary, path: str | Path) -> Path:
    """Write `dictionary` to the directory `path` (created) in the SAELens layout; returns the path.

    Example::

        from mechscope.dictionaries import load, save
        save(sae, "sae/")
        load("sae/")
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    c = dictionary.config
    arch = dictionary.architecture
    weights = {"W_enc": dictionary.W_enc, "b_enc": dictionary.b_enc, "W_dec": dictionary.W_dec,
               "b_dec": dictionary.b_dec}
    if arch == "jumprelu":
        weights["threshold"] = dictionary.threshold
    if isinstance(dictionary, BatchTopKSAE):
        weights["threshold"] = dictionary.threshold.clamp_min(0).expand(c.d_sae)
    if getattr(dictionary, "W_skip", None) is not None:  # a transcoder's skip connection
        weights["W_skip"] = dictionary.W_skip
    weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in weights.items()}
    dtype = str(dictionary.W_enc.dtype).removeprefix("torch.")
    cfg: dict[str, Any] = {
        "architecture": _TO_SAELENS.get(arch, f"mechscope.{arch}"), "d_in": c.in_width, "d_sae": c.d_sae,
        "dtype": dtype, "device": "cpu", "apply_b_dec_to_input": c.apply_b_dec_to_input,
        "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"model_name": c.model, "hook_name": c.site, "hook_name_out": c.site_out},
        "mechscope": {"format": FORMAT, "architecture": arch, "config": c.to_dict()},
    }
    if isinstance(c, TopKConfig) and arch == "topk":
        cfg |= {"k": c.k, "rescale_acts_by_decoder_norm": False}
    if c.d_out is not None:
        cfg["d_out"] = c.out_width
    write_tensors(path / WEIGHTS, weights, {"format": "pt"})
    write_json(path / CFG, cfg)
    return path


def load(path: str | Path, dtype: torch.dtype | None = None) -> Dictionary:
    """A dictionary from a directory in the SAELens layout, written by mechscope or by SAELens.

    Example::

        from mechscope.dictionaries import load
        sae = load("sae/")                       # cfg.json + sae_weights.safetensors
    """
    path = Path(path)
    cfg = read_json(path / CFG)
    # our files carry a digest of their tensors (checked); SAELens's do not
    weights, _ = read_tensors(path / WEIGHTS, check="sha256" in read_meta(path / WEIGHTS))
    ours = cfg.get("mechscope")
    if ours is not None:
        arch = ours["architecture"]
        config = config_class(arch).from_dict(ours["config"])
    else:
        arch, config = _from_saelens(cfg, path)
    d = dictionary_class(arch)(config)
    state = {"W_enc": weights.get("W_enc"), "b_enc": weights.get("b_enc"), "W_dec": weights.get("W_dec"),
             "b_dec": weights.get("b_dec")}
    if arch == "jumprelu":
        state["threshold"] = weights.get("threshold")
    if getattr(d, "W_skip", None) is not None:
        state["W_skip"] = weights.get("W_skip")
    missing = [k for k, v in state.items() if v is None]
    if missing:
        raise DictionaryFileError(f"{path / WEIGHTS} lacks {missing}; it has {sorted(weights)}")
    if isinstance(d, BatchTopKSAE):
        thr = weights.get("threshold")
        if thr is None or thr.numel() == 0 or not bool((thr == thr.reshape(-1)[0]).all()):
            raise DictionaryFileError(f"{path / WEIGHTS}: a BatchTopK file needs one threshold repeated per latent")
        state["threshold"] = thr.reshape(-1)[0].clone()
    target_dtype = dtype or _DTYPES.get(str(cfg.get("dtype", "float32")), torch.float32)
    for k, v in state.items():
        want = getattr(d, k).shape
        if tuple(v.shape) != tuple(want):
            raise DictionaryFileError(f"{path / WEIGHTS}: {k} has shape {tuple(v.shape)}, the config "
                                      f"({arch}, d_in={config.in_width}, d_sae={config.d_sae}) needs {tuple(want)}")
    d.load_state_dict({k: v.to(target_dtype) for k, v in state.items()})
    d.to(target_dtype)
    return d.eval()


def _from_saelens(cfg: dict[str, Any], path: Path) -> tuple[str, Any]:
    """Our architecture and config for a cfg.json written by SAELens."""
    arch = cfg.get("architecture", "standard")
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", "expected_average_only_in"):  # the latter is folded into the weights at save time
        raise DictionaryFileError(f"{path / CFG}: normalize_activations={norm!r} needs SAELens's run-time "
                                  "normalisation, which mechscope does not reproduce; fold it into the weights first")
    if cfg.get("reshape_activations", "none") not in ("none", "hook_z"):
        raise DictionaryFileError(f"{path / CFG}: reshape_activations={cfg['reshape_activations']!r} is not supported")
    meta = cfg.get("metadata") or {}
    common = {"d_in": int(cfg["d_in"]), "d_sae": int(cfg["d_sae"]),
              "apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", True)),
              "site": meta.get("hook_name") or cfg.get("hook_name"),
              "model": meta.get("model_name") or cfg.get("model_name")}
    if arch == "standard":
        return "relu", ReLUConfig(**common)
    if arch == "topk":
        if cfg.get("rescale_acts_by_decoder_norm"):
            raise DictionaryFileError(f"{path / CFG}: rescale_acts_by_decoder_norm=true is not supported; fold "
                                      "the decoder norms into the encoder first (SAELens: fold_W_dec_norm)")
        return "topk", TopKConfig(**common, k=int(cfg["k"]))
    if arch == "jumprelu":
        return "jumprelu", JumpReLUConfig(**common)
    raise DictionaryFileError(f"{path / CFG}: SAELens architecture {arch!r} has no mechscope counterpart; "
                              f"supported: standard, topk, jumprelu (mechscope: {', '.join(ARCHITECTURES)})")


def weights_equal(a: Dictionary, b: Dictionary) -> bool:
    """Exactly the same tensors under the same names (a round-trip check).

    Example::

        from mechscope.dictionaries import load, save, weights_equal
        save(sae, "sae/")
        weights_equal(sae, load("sae/"))         # True
    """
    sa, sb = a.state(), b.state()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

