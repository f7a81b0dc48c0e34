"""mechscope diff: what changed between two networks of one architecture (weights, behaviour,
activations), as a ranked list of findings with their evidence."""

from .pair import ArchitectureMismatch, check_same_architecture, load_model, load_pair
from .weight_diff import ComponentDiff, Direction, weight_diff

__all__ = ["ArchitectureMismatch", "ComponentDiff", "Direction", "check_same_architecture", "load_model",
           "load_pair", "weight_diff"]
