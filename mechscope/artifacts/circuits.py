"""circuits/<name>.json: a circuit's nodes and scored edges, its method, ablation and faithfulness."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .schema import ArtifactError, check_name, header, plain, spec_text, write_json


class CircuitWriter:
    """`ModelWriter.circuit` (a mixin: the writer supplies `path`)."""

    path: Path

    def circuit(self, name: str, nodes: Sequence[Mapping[str, Any]], edges: Sequence[Mapping[str, Any]], *,
                method: str, ablation: Any, faithfulness: Any = None, how: Mapping[str, Any] | None = None,
                n_edges_total: int | None = None) -> Path:
        """`nodes`: {"id", "layer" (-1 input ... n_layers output), "type" (input|head|mlp|output),
        "head"?}; `edges`: {"source", "target", "score", "via"?} with ids of `nodes`."""
        ids = {str(n["id"]) for n in nodes}
        bad = [e for e in edges if str(e["source"]) not in ids or str(e["target"]) not in ids]
        if bad:
            raise ArtifactError(f"circuit {name!r}: edges {bad[:3]} join nodes that are not listed")
        if faithfulness is not None and hasattr(faithfulness, "describe"):
            faithfulness = faithfulness.describe()
        obj = {**header("circuit"), "name": check_name(name, "circuit name"), "method": str(method),
               "ablation": spec_text(ablation), "how": plain(dict(how or {})),
               "nodes": [plain(dict(n)) for n in nodes],
               "edges": [plain(dict(e), 6) for e in edges], "faithfulness": plain(faithfulness),
               "n_edges_total": n_edges_total}
        return write_json(self.path / "circuits" / f"{name}.json", obj, indent=1)


def _node_of(node: Any, n_layers: int) -> dict[str, Any]:
    site = node.site
    kind = getattr(site.kind, "value", str(site.kind))
    if kind == "resid_pre" and site.layer == 0 and node.head is None:
        return {"id": "input", "type": "input", "layer": -1}
    if kind == "logits":
        return {"id": "output", "type": "output", "layer": n_layers}
    if kind in ("attn.z", "z") or (kind.startswith("attn") and node.head is not None):
        return {"id": f"a{site.layer}.{node.head}", "type": "head", "layer": site.layer, "head": node.head}
    return {"id": f"m{site.layer}", "type": "mlp", "layer": site.layer}


def circuit_from_edges(scores: Any = None, circuit: Any = None, k: int = 100, faithfulness: Any = None,
                       method: str | None = None, n_layers: int | None = None) -> dict[str, Any]:
    """Keyword arguments of `ModelWriter.circuit` from `EdgeScores` (its top-k edges by |score|,
    or the edges of `circuit` with their scores) and/or a `Circuit` (scores then None).

    Example::

        from mechscope.artifacts import circuit_from_edges
        from mechscope.causal import eap
        scores = eap(model, clean, ld, spec, reference_inputs=corrupt)   # EdgeScores
        writer.model("zoo:induction-quick").circuit("eap", **circuit_from_edges(scores, k=50))
    """
    if scores is None and circuit is None:
        raise ArtifactError("give EdgeScores, a Circuit, or both")
    graph = getattr(scores, "graph", None)
    L = n_layers if n_layers is not None else (graph.n_layers if graph is not None else None)
    if circuit is not None:
        if scores is not None:
            vals = scores.values.tolist()
            pairs = [(e, vals[graph.index(e)]) for e in circuit]
        else:
            pairs = [(e, None) for e in circuit]
    else:
        pairs = scores.top(k)
    if L is None:
        L = 1 + max((e.sender.site.layer or 0) for e, _ in pairs) if pairs else 1
    nodes: dict[str, dict[str, Any]] = {}
    edges = []
    for e, v in pairs:
        s = _node_of(e.sender, L)
        recv = e.receiver
        kind = getattr(recv.site.kind, "value", str(recv.site.kind))
        if kind in ("attn.q_in", "attn.k_in", "attn.v_in"):
            t = {"id": f"a{recv.site.layer}.{recv.head}", "type": "head", "layer": recv.site.layer,
                 "head": recv.head}
            via = kind.split(".")[1][0]
        elif kind == "mlp_in":
            t, via = {"id": f"m{recv.site.layer}", "type": "mlp", "layer": recv.site.layer}, None
        else:
            t, via = _node_of(recv, L), None
        nodes.setdefault(s["id"], s)
        nodes.setdefault(t["id"], t)
        edges.append({"source": s["id"], "target": t["id"], "via": via, "score": v})
    how = dict(getattr(scores, "how", {}) or {})
    ablation = {k: how[k] for k in ("ablation", "reference", "level", "positions", "direction", "ablated")
                if k in how} or "unspecified"
    return {"nodes": list(nodes.values()), "edges": edges,
            "method": method or how.get("method", getattr(circuit, "name", "") or "circuit"),
            "ablation": ablation, "faithfulness": faithfulness, "how": how,
            "n_edges_total": graph.n_edges if graph is not None else len(edges)}
