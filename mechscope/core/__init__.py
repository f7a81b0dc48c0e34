"""Core vocabulary: sites, caches, interventions, run(), weight views. Knows no architecture."""

from .cache import Cache
from .errors import InterventionError, LoadError, MechscopeError, SiteError
from .factored import FactoredMatrix
from . import metrics
from .interventions import Add, Context, Intervention, Mean, Patch, Replace, Resample, Scale, Zero
from .protocol import Adapter, Prepared, Window
from .metrics import Metric
from .passes import PassCount, counting_passes
from .run import RunResult, resolve, run
from .resume import resume_point, run_from
from .score import Score, bootstrap_ci
from .site import Kind, Layout, Site
from .weights import Weights

__all__ = ["Adapter", "Add", "Cache", "Context", "FactoredMatrix", "Intervention", "InterventionError",
           "Kind", "Layout", "LoadError", "Mean", "Metric", "MechscopeError", "PassCount", "Patch", "Prepared", "Replace",
           "Resample", "RunResult", "Scale", "Score", "Site", "SiteError", "Weights", "Window", "Zero", "bootstrap_ci", "counting_passes", "metrics", "resolve", "resume_point", "run",
           "run_from"]
