"""graphs/<name>.json: an attribution graph (the JSON `mechscope graph` writes: kept nodes, kept
edges, scores) saved with a model, and where each layer's latents have their dashboards.

A graph's latent nodes carry (layer, index). When those latents were also harvested into the
model's FeatureStore (features.json + features.duckdb), `feature_sets` maps each such layer (as
text) to its feature-set name, so the viewer can show a latent's dashboard: `store.page(set,
index)`. Layers without an entry (or a model without a store) have no dashboards.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .features import store_sets
from .schema import ArtifactError, check_name, header, load_json, plain, read_json, write_json

GRAPH_SCHEMA = "mechscope.attribution_graph/1"
NODE_KINDS = ("latent", "error", "token", "logit")


def _check_graph(doc: Mapping[str, Any], what: str) -> None:
    """Refuse a graph document that is not `GraphWriter`'s input: the schema, nodes with unique
    integer ids and known kinds, edges between kept nodes."""
    if not isinstance(doc, Mapping) or doc.get("schema") != GRAPH_SCHEMA:
        got = doc.get("schema") if isinstance(doc, Mapping) else type(doc).__name__
        raise ArtifactError(f"{what} is not an attribution graph (schema {got!r}, expected {GRAPH_SCHEMA!r}); "
                            "give the JSON `mechscope graph --out` writes or `AttributionGraph.to_json()`")
    nodes, edges = doc.get("nodes"), doc.get("edges")
    if not isinstance(nodes, list) or not isinstance(edges, list) or not isinstance(doc.get("tokens"), list):
        raise ArtifactError(f"{what} lacks its lists of tokens, nodes and edges")
    ids = set()
    for n in nodes:
        if not isinstance(n, Mapping) or not isinstance(n.get("id"), int) or n.get("kind") not in NODE_KINDS:
            raise ArtifactError(f"{what}: every node needs an integer id and a kind in {NODE_KINDS}, got {n!r:.200}")
        if n["id"] in ids:
            raise ArtifactError(f"{what}: node id {n['id']} appears twice")
        ids.add(n["id"])
    for e in edges:
        if not isinstance(e, Mapping) or e.get("source") not in ids or e.get("target") not in ids:
            raise ArtifactError(f"{what}: edge {e!r:.200} joins nodes the graph does not keep")


class GraphWriter:
    """`ModelWriter.graph` (a mixin: the writer supplies `path` and `features`)."""

    path: Path

    def graph(self, name: str, graph: Mapping[str, Any] | str | Path, *, prompt: str | None = None,
              feature_sets: Mapping[int, str] | None = None, store: str | Path | None = None) -> Path:
        """Save an attribution graph as graphs/NAME.json: `graph` is `AttributionGraph.to_json(...)`'s dict or
        the path of a graph.json. `feature_sets` maps a layer to the name of the feature set holding its
        latents' dashboards, in the model's FeatureStore; `store` registers that store first (copied in, as
        `features(store)` does). Every named set must be in the store.

        Example::

            from mechscope.artifacts import ArtifactWriter
            m = ArtifactWriter("out").model("zoo:textlm")
            m.graph("capital", "runs/g/graph.json", prompt="The capital of France is",
                    feature_sets={0: "tc.0", 1: "tc.1"}, store="runs/tc-features.duckdb")
        """
        check_name(name, "graph name")
        if isinstance(graph, (str, Path)):
            src = Path(graph)
            graph = load_json(src, missing="write it with `mechscope graph ... --out DIR`",
                              invalid="write it again with `mechscope graph ... --out DIR`")
            what = str(src)
        else:
            what = f"graph {name!r}"
        _check_graph(graph, what)
        sets: dict[str, str] = {}
        if feature_sets:  # checked before anything is written
            info = self.path / "features.json"
            if store is not None:
                if not Path(store).is_file():
                    raise ArtifactError(f"{store} does not exist; build a FeatureStore there first")
                have = store_sets(store)
            elif info.is_file():
                have = read_json(info, "features").get("sets", [])
            else:
                raise ArtifactError(f"graph {name!r} names feature sets but model directory {self.path} has no "
                                    "feature store; pass store= (the FeatureStore holding those sets)")
            for layer, set_id in feature_sets.items():
                if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                    raise ArtifactError(f"graph {name!r}: feature_sets keys are layers (integers >= 0), got {layer!r}")
                if set_id not in have:
                    raise ArtifactError(f"graph {name!r}: feature set {set_id!r} (layer {layer}) is not in the "
                                        f"model's feature store; it holds {have}")
                sets[str(layer)] = set_id
        if store is not None:
            self.features(store)  # type: ignore[attr-defined]
        body = {k: v for k, v in graph.items() if k != "schema"}
        obj = {**plain(body), **header("graph"), "name": name, "prompt": prompt, "graph_schema": GRAPH_SCHEMA,
               "feature_sets": sets}
        d = self.path / "graphs"
        d.mkdir(exist_ok=True)
        return write_json(d / f"{name}.json", obj)
