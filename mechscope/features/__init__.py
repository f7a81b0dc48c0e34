"""Features: dashboards in an embedded DuckDB store, for neurons, directions and dictionary latents."""

from .dashboards import DashboardSummary, build_dashboards, logit_effects
from .feature import FeatureSet
from .store import FeatureStore, StoreError

__all__ = ["DashboardSummary", "FeatureSet", "FeatureStore", "StoreError", "build_dashboards", "logit_effects"]
