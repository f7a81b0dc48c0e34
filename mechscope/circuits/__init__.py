"""Circuits read off activations and weights (one method per file)."""

from .composition import Composition, composition_scores, copying_scores, virtual_weights
from .direct_logit_attribution import DirectLogitAttribution, direct_logit_attribution
from .head_roles import HeadRoles, head_roles, repeated_tokens
from .logit_lens import LogitLens, logit_lens
from .explain import ExplanationScore
from .explain import score as explain_score
from .explanations import Explanation, modadd_fourier, previous_token, strict_induction, uniform_causal
from .head_role_checks import CopySuppression, RoleCheck, causal_check, copy_suppression_scores
from .handwritten import handwritten_induction
from .conv_code import conv_hypothesis
from .modadd_code import modadd_hypothesis
from .modadd_layout import ModAddLayout
from .tms_code import tms_hypothesis

__all__ = ["Composition", "DirectLogitAttribution", "HeadRoles", "composition_scores", "copying_scores", "LogitLens", "direct_logit_attribution", "head_roles", "logit_lens", "repeated_tokens",
           "CopySuppression", "Explanation", "ExplanationScore", "RoleCheck", "causal_check", "copy_suppression_scores",
           "explain_score", "handwritten_induction", "virtual_weights", "modadd_fourier", "previous_token", "strict_induction", "uniform_causal",
           "ModAddLayout", "conv_hypothesis", "modadd_hypothesis", "tms_hypothesis"]
