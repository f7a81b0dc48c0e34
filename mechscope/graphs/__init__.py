"""Attribution graphs through a local replacement model (Ameisen et al. 2025, "Circuit tracing").

- `latents.py` — `LatentLayer`: transcoder latents reading one layer's MLP input and writing one or
  more MLP outputs (per-layer or cross-layer); `latent_layers` checks a mapping layer -> transcoder.
- `replacement.py` — `LocalReplacement`: MLPs replaced by latents plus fixed error terms, attention
  patterns and norm divisors frozen from the real run; exact on its prompt.
- `attribution.py` — `attribute`: the graph's direct linear effects from batched backward passes.
- `files.py` — `load_transcoders`: a directory of per-layer transcoders, checked.
- `graph.py` — `AttributionGraph`, `Node`, JSON for the viewer.
- `prune.py` — influence, pruning, replacement and completeness scores.
- `check.py` — predicted against measured effects of removing latents (Spearman); the prediction
  reads the graph's predicted final residual through the live final norm; measured in the live
  replacement (the check) and in the real model (`measured_in_model`).
"""

from .attribution import GraphBudgetError, attribute, top_logits
from .check import (InterventionCheck, intervention_check, measured_in_model, measured_removals, predicted_removal,
                    predicted_through_final_norm, spearman)
from .files import load_transcoders
from .graph import AttributionGraph, Node, NodeKind
from .latents import LatentError, LatentLayer, latent_layers, neuron_latents
from .prune import Pruned, graph_scores, influence, normalised, prune
from .replacement import LocalReplacement, ReplacementError

__all__ = ["AttributionGraph", "GraphBudgetError", "InterventionCheck", "LatentError", "LatentLayer",
           "LocalReplacement", "Node", "NodeKind", "Pruned", "ReplacementError", "attribute", "graph_scores",
           "influence", "intervention_check", "latent_layers", "load_transcoders", "measured_in_model", "measured_removals", "neuron_latents", "normalised", "predicted_removal",
           "predicted_through_final_norm", "prune",
           "spearman", "top_logits"]
