"""A small real attribution graph saved as an artifact, with a feature store for one layer's latents.

The graph is computed (not written by hand): the two-layer layer-norm TinyTransformer of
test_graphs.py with top-4 transcoders on both layers, pruned. The feature store holds a dashboard
(a label, top examples, an explanation) for every latent of layer 0 only, so a layer-1 latent is a
latent without one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mechscope import artifacts as A
from mechscope import graphs as G
from mechscope.features.store import FeatureStore
from test_graphs import ids_for, tiny, transcoder

MODEL = "tiny-graph"
N_LATENTS = 24


def dashboard_rows(set_id: str, n: int) -> dict:
    """One feature row, one top example and one explanation per latent (the text names the latent)."""
    feats = [{"set_id": set_id, "feature": f, "label": f"latent {f}", "n_active": 3, "density": 0.1, "max_act": 1.0 + f,
              "mean_act": 0.5} for f in range(n)]
    examples = [{"set_id": set_id, "feature": f, "kind": "top", "rank": 0, "doc": 0, "pos": 1, "activation": 1.0 + f,
                 "tokens": ["a", f"t{f}", "c"], "acts": [0.0, 1.0 + f, 0.1]} for f in range(n)]
    expl = [{"set_id": set_id, "feature": f, "rank": 0, "explanation": f"fires on t{f}", "corr": 0.5, "precision": None,
             "recall": None, "loss_recovered": None, "spec": None} for f in range(n)]
    return {"features": feats, "examples": examples, "explanations": expl}


def build_graph_artifacts(root: Path) -> tuple[Path, dict]:
    """An artifact directory at `root` holding graph "tiny" of MODEL; returns (root, the graph's JSON)."""
    torch.manual_seed(0)
    rep = G.LocalReplacement.build(tiny(), ids_for(40, n=5), {0: transcoder(0, 16, n=N_LATENTS),
                                                              1: transcoder(1, 16, n=N_LATENTS, seed=1)})
    g = G.attribute(rep, model_name=MODEL, token_text=[f"w{int(i)}" for i in rep.ids[0]])
    p = G.prune(g, 0.8, 0.98)
    doc = g.to_json(keep=p.keep, edges=p.edges, scores=p.scores, influence=p.influence)
    store = root.parent / "tc-features.duckdb"
    with FeatureStore(store) as st:
        st.replace_set({"set_id": "tc.0", "model": MODEL, "site": "ln2.0", "kind": "latent", "n_features": N_LATENTS,
                        "n_tokens": 100, "dataset": "hand-made", "built_at": "now"}, dashboard_rows("tc.0", N_LATENTS))
    m = A.ArtifactWriter(root).model(MODEL)
    m.graph("tiny", doc, prompt=" ".join(doc["token_text"]), feature_sets={0: "tc.0"}, store=store)
    return root, doc
