"""Causal analyses: interventions that measure what a component does (one method per file)."""

from .ablation import AblationKind, AblationSpec, Node
from .acdc import AcdcResult, acdc, acdc_sweep
from .activation_patching import PatchingResult, activation_patching
from .attribution_patching import attribution_patching
from .completeness import CompletenessReport, completeness_minimality
from .eap import eap
from .eap_ig import eap_ig
from .edge_faithfulness import edge_faithfulness, recovery
from .edges import AblatedValues, EdgeScores, ablated_values, edge_run
from .faithfulness import component_nodes, faithfulness
from .faithfulness_curve import FaithfulnessCurve, faithfulness_curve
from .graph import INPUT, OUTPUT, Circuit, Edge, Graph, graph_of
from .ground_truth import edge_auc, edges_from_ids, roc_auc
from .path_patching import PathPatchingResult, edge_patching, path_patching
from .robustness import RobustnessReport, robustness_report
from .scrub import ScrubError, ScrubResult, scrub

__all__ = ["AblatedValues", "AblationKind", "AblationSpec", "AcdcResult", "Circuit", "CompletenessReport", "Edge",
           "EdgeScores", "FaithfulnessCurve", "Graph", "INPUT", "Node", "OUTPUT", "PatchingResult",
           "PathPatchingResult", "RobustnessReport", "ablated_values", "acdc", "acdc_sweep", "activation_patching",
           "attribution_patching", "completeness_minimality", "component_nodes", "eap", "eap_ig", "edge_auc",
           "edge_faithfulness", "edge_patching", "edge_run", "edges_from_ids", "faithfulness", "faithfulness_curve",
           "graph_of", "path_patching", "recovery", "robustness_report", "roc_auc", "ScrubError", "ScrubResult",
           "scrub"]
