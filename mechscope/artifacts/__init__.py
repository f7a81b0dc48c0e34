"""Saved artifacts: a versioned directory that reports, the viewer and notebooks read.

Analyses write plain JSON (and a DuckDB feature store) here; the report and the viewer read only
these files, never the model or the analysis code. Layout (schema version 1):

    out/
      manifest.json                 {"format": "mechscope-artifacts", "schema_version": 1,
                                     "created": ISO time, "models": [{"name", "dir"}]}
      <model dir>/
        overview.json               name, architecture, n_layers, n_heads, d_model, vocab, sites,
                                    params (and free-form "notes")
        attention.json              prompt tokens and pattern[layer][head][query][key] (4 decimals)
        head_roles.json             role -> (layer, head) score matrix, probe settings,
                                    optional causal check: {"metric", "ablation", "values"}
        patching/<name>.json        heatmap: rows, cols, values (null = not measured), metric,
                                    ablation specification, how
        circuits/<name>.json        nodes, edges (source, target, via, score), method, ablation,
                                    faithfulness (a Score's describe()) when given
        training.json               metric curves over steps: {"metrics": {name: [[step, value], ...]}}
        explanations/<name>.json    a network replaced by code (`mechscope explain-all --out`): the
                                    hypothesis's parts and sizes, and per ablation the loss recovered
        features.json + features.duckdb
                                    the FeatureStore file (mechscope.features.store) and its sets
        graphs/<name>.json          an attribution graph (`mechscope graph --artifacts`): kept nodes,
                                    edges, scores, and feature_sets (layer -> the feature set of its
                                    latents' dashboards in features.duckdb)
        vision/<name>.json + vision/<name>/*.png
                                    what a vision channel or layer responds to (`mechscope vis`):
                                    panels of PNG image grids, curves, tables and figures
        studies/<name>.json         a study's findings (`mechscope.studies`): sections of text and
                                    tables, its checks, and the names of the graphs saved with it

Every JSON file carries {"kind": ..., "schema_version": 1}. `read_artifacts(dir)` checks the
manifest's version and fails with an `ArtifactError` naming the file and what to do. Writers take
plain Python values and tensors; the `*_from_*` helpers convert mechscope's result objects (looked
up by attribute, so this package imports no analysis). Every write is atomic (temp file + rename).

Modules: `schema` (version, names, plain values, checked JSON reads and writes), one module per
file kind holding its writer method and its converter (`overview`, `heads` for attention and head
roles, `patching`, `circuits`, `training`, `features`, `explanations`, `graphs`, `vision`, `studies`), `writer` (the manifest and `ModelWriter`,
which gathers the per-kind methods) and `reader` (`read_artifacts`, `load_all`).
"""

from __future__ import annotations

from .circuits import circuit_from_edges
from .features import feature_rows, features_snapshot
from .heads import roles_from_head_roles
from .overview import overview_from_model
from .patching import heatmap_from_patching
from .reader import Artifacts, ModelArtifacts, load_all, read_artifacts
from .schema import (DEFAULT_DIR, FORMAT, KINDS, REQUIRED, SCHEMA_VERSION, ArtifactError, check_name, plain, slug,
                     spec_text)
from .training import training_from_run
from .writer import ArtifactWriter, ModelWriter

__all__ = ["ArtifactError", "ArtifactWriter", "Artifacts", "ModelArtifacts", "ModelWriter", "SCHEMA_VERSION",
           "circuit_from_edges", "check_name", "feature_rows", "features_snapshot", "heatmap_from_patching", "load_all",
           "overview_from_model", "plain", "read_artifacts", "roles_from_head_roles", "slug", "spec_text", "training_from_run"]
