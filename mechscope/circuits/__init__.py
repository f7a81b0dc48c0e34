"""Circuits read off activations and weights (one method per file)."""

from .direct_logit_attribution import DirectLogitAttribution, direct_logit_attribution
from .logit_lens import LogitLens, logit_lens

__all__ = ["DirectLogitAttribution", "LogitLens", "direct_logit_attribution", "logit_lens"]
