"""Circuits read off activations and weights (one method per file)."""

from .composition import Composition, composition_scores, copying_scores
from .direct_logit_attribution import DirectLogitAttribution, direct_logit_attribution
from .head_roles import HeadRoles, head_roles, repeated_tokens
from .logit_lens import LogitLens, logit_lens

__all__ = ["Composition", "DirectLogitAttribution", "HeadRoles", "composition_scores", "copying_scores", "LogitLens", "direct_logit_attribution", "head_roles", "logit_lens", "repeated_tokens"]
