"""The architectures by name: `build("topk", d_in=512, d_sae=4096, k=32)`."""

from __future__ import annotations

from typing import Any

from .base import DictConfig, Dictionary
from .batchtopk import BatchTopKConfig, BatchTopKSAE
from .clt import CLTConfig, CrossLayerTranscoder
from .crosscoder import BatchTopKCrosscoder, BatchTopKCrosscoderConfig, Crosscoder, CrosscoderConfig
from .jumprelu import JumpReLUConfig, JumpReLUSAE
from .relu import ReLUConfig, ReLUSAE
from .relu_transcoder import ReLUTranscoder, ReLUTranscoderConfig
from .topk import TopKConfig, TopKSAE
from .transcoder import Transcoder, TranscoderConfig

ARCHITECTURES: dict[str, tuple[type[DictConfig], type[Dictionary]]] = {
    cls.architecture: (cfg, cls) for cfg, cls in [
        (ReLUConfig, ReLUSAE), (TopKConfig, TopKSAE), (BatchTopKConfig, BatchTopKSAE),
        (JumpReLUConfig, JumpReLUSAE), (TranscoderConfig, Transcoder), (ReLUTranscoderConfig, ReLUTranscoder),
        (CrosscoderConfig, Crosscoder),
        (BatchTopKCrosscoderConfig, BatchTopKCrosscoder), (CLTConfig, CrossLayerTranscoder)]
}


def config_class(architecture: str) -> type[DictConfig]:
    """The config class of `architecture`; an unknown name raises KeyError listing the known ones.

    Example::

        from mechscope.dictionaries import config_class
        config_class("jumprelu")                 # JumpReLUConfig
    """
    return _entry(architecture)[0]


def dictionary_class(architecture: str) -> type[Dictionary]:
    """The dictionary class of `architecture`; an unknown name raises KeyError listing the known ones.

    Example::

        from mechscope.dictionaries import dictionary_class
        dictionary_class("topk")                 # TopKSAE
    """
    return _entry(architecture)[1]


def _entry(architecture: str) -> tuple[type[DictConfig], type[Dictionary]]:
    if architecture not in ARCHITECTURES:
        raise KeyError(f"no dictionary architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[architecture]


def build(architecture: str | DictConfig, **fields: Any) -> Dictionary:
    """A freshly initialised dictionary from an architecture name and config fields, or from a config.

    Example::

        from mechscope.dictionaries import build
        sae = build("topk", d_in=576, d_sae=4608, k=32)
    """
    if isinstance(architecture, DictConfig):
        if fields:
            raise TypeError("give either a config or an architecture name with fields, not both")
        for cfg_cls, cls in ARCHITECTURES.values():
            if type(architecture) is cfg_cls:
                return cls(architecture)
        raise KeyError(f"{type(architecture).__name__} belongs to no registered architecture")
    cfg_cls, cls = _entry(architecture)
    return cls(cfg_cls(**fields))
