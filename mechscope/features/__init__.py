"""Features: dashboards in an embedded DuckDB store, for neurons, directions and dictionary latents."""

from typing import Any

from .feature import FeatureSet
from .store import FeatureStore, StoreError

_LAZY = {"DashboardSummary", "build_dashboards", "logit_effects"}  # the analysis loads on first use, so
# readers of a stored FeatureStore (the report, the viewer) import no analysis code


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import dashboards

        return getattr(dashboards, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DashboardSummary", "FeatureSet", "FeatureStore", "StoreError", "build_dashboards", "logit_effects"]
