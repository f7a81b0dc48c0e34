"""Causal analyses: interventions that measure what a component does (one method per file)."""

from .activation_patching import PatchingResult, activation_patching
from .attribution_patching import attribution_patching

__all__ = ["PatchingResult", "activation_patching", "attribution_patching"]
