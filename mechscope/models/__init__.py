"""Adapters: how each architecture family exposes sites and weights, and `wrap` to pick one."""

from __future__ import annotations

import weakref
from typing import Any

from torch import nn

from . import bert, gemma2, gemma3, gpt2, gpt_neox, llama, qwen3
from .base import ModelBase
from .generic import ModuleModel
from .hf import HFModel, Spec

SPECS: tuple[Spec, ...] = (gpt2.SPEC, gpt_neox.SPEC, llama.SPEC, qwen3.SPEC, gemma2.SPEC, gemma3.SPEC, bert.SPEC)


def spec_for(model_type: str) -> Spec | None:
    """The adapter spec whose model types include Hugging Face's `model_type`, or None.

    Example::

        from mechscope.models import spec_for
        spec_for("gpt2").model_types             # ("gpt2",)
        spec_for("t5")                           # None: no adapter for that family
    """
    for spec in SPECS:
        if model_type in spec.model_types:
            return spec
    return None


def wrap(module: Any, tokenizer: Any = None, name: str | None = None) -> ModelBase:
    """An adapter for `module`: a family adapter for known Hugging Face models, else the generic one.

    An adapter passes through unchanged.

    Example::

        net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        model = ms.wrap(net)
        ms.run(model, torch.randn(16, 4), capture=["1"]).cache["1"]  # (16, 8): submodule "1"'s output
    """
    if isinstance(module, ModelBase):
        return module
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a torch nn.Module, got {type(module).__name__}")
    if tokenizer is None and name is None and module in _WRAPPED:
        return _WRAPPED[module]
    adapter = _make(module, tokenizer, name)
    if tokenizer is None and name is None:
        _WRAPPED[module] = adapter
    return adapter


_WRAPPED: "weakref.WeakKeyDictionary[nn.Module, ModelBase]" = weakref.WeakKeyDictionary()


def _make(module: nn.Module, tokenizer: Any, name: str | None) -> ModelBase:
    make = getattr(module, "mechscope_adapter", None)  # modules that bring their own adapter (zoo)
    if callable(make):
        return make(tokenizer=tokenizer, name=name)
    config = getattr(module, "config", None)
    spec = spec_for(getattr(config, "model_type", "")) if config is not None else None
    if spec is not None:
        return HFModel(module, spec, tokenizer=tokenizer, name=name)
    return ModuleModel(module, name=name)


__all__ = ["HFModel", "ModelBase", "ModuleModel", "Spec", "SPECS", "spec_for", "wrap"]
