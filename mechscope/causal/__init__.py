"""Causal analyses: interventions that measure what a component does (one method per file)."""

from .ablation import AblationKind, AblationSpec, Node
from .activation_patching import PatchingResult, activation_patching
from .attribution_patching import attribution_patching
from .faithfulness import component_nodes, faithfulness

__all__ = ["AblationKind", "AblationSpec", "Node", "PatchingResult", "activation_patching",
           "attribution_patching", "component_nodes", "faithfulness"]
