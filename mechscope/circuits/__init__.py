"""Circuits read off activations and weights (one method per file)."""

from .composition import Composition, composition_scores, copying_scores
from .direct_logit_attribution import DirectLogitAttribution, direct_logit_attribution
from .logit_lens import LogitLens, logit_lens

__all__ = ["Composition", "DirectLogitAttribution", "composition_scores", "copying_scores", "LogitLens", "direct_logit_attribution", "logit_lens"]
