"""How well each circuit-discovery method recovers circuits known by construction: ROC AUC tables.

Networks: the known-circuit networks (`mechscope.rasp.known_circuits`: compiled RASP programs
and a hand-set induction circuit) and, when it has been trained, the zoo's two-layer induction
model, whose ground truth is the induction mechanism read off its heads' attention patterns
(previous-token and two-back heads in layer 0, induction heads in layer 1; a hypothesis, not a
construction).

Steps, for each network and ablation kind (zero, mean, resample, counterfactual patch):
1. the ground-truth edge set for that kind;
2. each method's edge scores: exact edge patching (the oracle, one real intervention per edge),
   EAP, EAP-IG on inputs and on edge masks, ACDC swept over thresholds (an edge's score is the
   largest threshold at which it survives);
3. ROC AUC of each ranking (|score|) against the ground truth, and the passes each method cost.

`main` prints the table and ends with one JSON line; the checks are the targets: EAP-IG and ACDC
>= 0.95 on every known-circuit network under patch, resample and mean ablation.

Zero ablation is not among the checked kinds, for a reason the table shows: exact patching ranks
every known circuit perfectly under it (ROC AUC 1), but on `sort` one true edge, `input -> m0<`
(the constant `bos` that keeps the selector-width MLP silent at BOS), changes the metric only when
it is ablated while `a0.0 -> m0<` is not. Both EAP-IG paths shrink the two together, the MLP stays
flat at BOS, and the edge scores exactly 0 at every step count tried (5 to 200); a ranking that
puts it level with the edges that do nothing and every other edge right scores 0.944. On
`reverse` the compiled MLPs are steps whose ramps a 10-point Riemann sum misses on the input path
(0.859; 50 steps 0.979, and 0.989 on edge masks at 10). `tests/test_known_circuits.py` checks
the sort edge. On `zoo:induction` (layer norm) 9 of the 41 true zero-ablation edges feed layer-0
heads, which read the embeddings alone through a LayerNorm: zero-ablating such an edge rescales
what the norm sees, which it undoes until the very end, so every gradient method scores them
near 0 (at most 1.4e-3; exact patching up to 3.3; `tests/test_eap.py` shows it on a tiny model).
"""

from __future__ import annotations

import json
import time
from typing import Any

import torch

from ..causal import AblationSpec, Edge, Node, acdc_sweep, eap, eap_ig, edge_auc, edge_patching, edges_from_ids, \
    graph_of
from ..causal.graph import INPUT, OUTPUT
from ..circuits import head_roles
from ..core import metrics
from ..core.progress import echo
from ..core.site import Kind, Site
from ..models.load import check_device, load
from ..rasp.known_circuits import KINDS, load_known, names

THRESHOLDS = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
TARGET_KINDS = ("mean", "resample", "patch")


def zoo_induction(n_prompts: int = 48, seed: int = 0, name: str = "induction",
                  device: str | None = None) -> dict[str, Any] | None:
    """The trained zoo induction model (the cache's run, else the copy shipped in the package) on `device`
    with data and mechanism-hypothesis ground truth, or None when neither is there."""
    from .. import zoo
    from ..core.errors import LoadError
    from ..zoo.recipes.induction import make_batch

    try:
        model = load(f"zoo:{name}", device=device)
    except LoadError:
        return None
    hp = zoo.spec(name).hp
    batch = make_batch(n_prompts, hp, torch.Generator().manual_seed(10_000 + seed))
    other = make_batch(n_prompts, hp, torch.Generator().manual_seed(20_000 + seed))
    answers = torch.full_like(batch.ids, -1)
    answers[:, :-1] = torch.where(batch.repeat, batch.ids[:, 1:], -1)  # position t predicts token t + 1
    roles = head_roles(model, n=12, batch=32, vocab=hp["d_vocab"])
    prev = [h for h in range(roles.previous_token.shape[1]) if roles.previous_token[0, h] > 0.4]
    ind = [h for h in range(roles.induction.shape[1]) if roles.induction[1, h] > 0.4]
    # layer-0 heads that attend two tokens back: the induction heads match the two tokens before an
    # earlier position against the current and previous tokens (their keys read these heads, their
    # queries the previous-token heads)
    site = Site(Kind.PATTERN, 0)
    pattern = model.run(batch.ids, capture=[site]).cache[site]  # (batch, head, q, k)
    q = torch.arange(2, batch.ids.shape[1], device=pattern.device)
    back2 = [h for h in range(pattern.shape[1]) if h not in prev and float(pattern[:, h, q, q - 2].mean()) > 0.4]
    port = lambda kind, layer, h: Node(Site(kind, layer), h)  # noqa: E731
    layer0 = prev + back2
    informative = {Edge(INPUT, port(Kind.V_IN, 0, p)) for p in layer0}
    informative |= {Edge(Node(Site(Kind.Z, 0), p), port(Kind.K_IN, 1, i)) for p in layer0 for i in ind}
    informative |= {Edge(Node(Site(Kind.Z, 0), p), port(Kind.Q_IN, 1, i)) for p in prev for i in ind if back2}
    informative |= {Edge(INPUT, port(k, 1, i)) for i in ind for k in (Kind.Q_IN, Kind.V_IN)}
    informative |= {Edge(Node(Site(Kind.Z, 1), i), OUTPUT) for i in ind}
    positional = {Edge(INPUT, port(k, 0, p)) for p in layer0 for k in (Kind.Q_IN, Kind.K_IN)}
    positional |= {Edge(INPUT, port(Kind.K_IN, 1, i)) for i in ind}
    truth = {k: frozenset(informative | (positional if k == "zero" else set())) for k in KINDS}
    return {"name": f"zoo:{name}", "model": model, "inputs": batch.ids, "counterfactuals": other.ids,
            "answers": answers, "truth": truth, "previous_token_heads": prev, "two_back_heads": back2,
            "induction_heads": ind}


def _score_all(model, inputs, counterfactuals, answers, truth, kind: str, steps: int) -> dict[str, Any]:
    spec = AblationSpec(kind, reference={"zero": "", "patch": "counterfactuals"}.get(kind, "the dataset"),
                        granularity="edge")
    ref = None if kind == "zero" else (counterfactuals if kind == "patch" else inputs)
    graph = graph_of(model)
    metric = metrics.sequence_logprob(answers)
    out: dict[str, Any] = {"edges": graph.n_edges, "true_edges": len(truth)}
    methods = {
        "exact": lambda: edge_patching(model, inputs, metric, spec, reference_inputs=ref, graph=graph),
        "EAP": lambda: eap(model, inputs, metric, spec, reference_inputs=ref, graph=graph),
        "EAP-IG": lambda: eap_ig(model, inputs, metric, spec, reference_inputs=ref, steps=steps, graph=graph),
        "EAP-IG-edges": lambda: eap_ig(model, inputs, metric, spec, reference_inputs=ref, steps=steps,
                                       interpolate="edges", graph=graph),
        "ACDC": lambda: acdc_sweep(model, inputs, spec, THRESHOLDS, reference_inputs=ref, graph=graph),
    }
    for name, fn in methods.items():
        t = time.time()
        scores = fn()
        out[name] = {"auc": edge_auc(scores, truth), "seconds": time.time() - t,
                     "forward_passes": scores.how["forward_passes"], "backward_passes": scores.how["backward_passes"]}
    return out


def run_benchmark(models: tuple[str, ...] | None = None, kinds: tuple[str, ...] = KINDS, steps: int = 10,
                  n_prompts: int = 48, zoo: str | None = "induction", log: Any = echo,
                  device: str | None = None) -> dict[str, Any]:
    """The ROC AUC table (see the module docstring), every network run on `device` (None: the CPU);
    returns JSON-ready results."""
    t0 = time.time()
    torch.manual_seed(0)
    rows = []
    nets = []
    for name in models or names():
        kc = load_known(name, n_prompts)
        if device is not None:
            kc.model.module.to(check_device(device))
        nets.append((name, kc.model, kc.inputs, kc.counterfactuals, kc.answers,
                     {k: edges_from_ids(v) for k, v in kc.truth.items()}, True))
    notes = []
    if zoo:
        z = zoo_induction(n_prompts, name=zoo, device=device)
        if z is None:
            notes.append(f"zoo:{zoo} is not trained (mechscope zoo train {zoo}); left out")
        elif not z["previous_token_heads"] or not z["induction_heads"]:
            notes.append(f"zoo:{zoo}: no previous-token or induction head found; left out")
        else:
            notes.append(f"zoo:{zoo}: previous-token heads L0 {z['previous_token_heads']}, two-back heads L0 "
                         f"{z['two_back_heads']}, induction heads L1 {z['induction_heads']} (ground truth = the "
                         "mechanism read from attention patterns)")
            nets.append((z["name"], z["model"], z["inputs"], z["counterfactuals"], z["answers"], z["truth"], False))
    method_names = ("exact", "EAP", "EAP-IG", "EAP-IG-edges", "ACDC")
    log(f"{'network':>14} {'ablation':>9} {'edges':>6} {'true':>5} " + " ".join(f"{m:>12}" for m in method_names))
    for name, model, inputs, cf, answers, truth, known in nets:
        for kind in kinds:
            r = _score_all(model, inputs, cf, answers, truth[kind], kind, steps)
            rows.append({"network": name, "ablation": kind, "by_construction": known, **r})
            log(f"{name:>14} {kind:>9} {r['edges']:>6} {r['true_edges']:>5} "
                + " ".join(f"{r[m]['auc']:>12.3f}" for m in method_names))
    for n in notes:
        log(n)
    checks = {}
    for m in ("EAP-IG", "ACDC"):
        got = [r[m]["auc"] for r in rows if r["by_construction"] and r["ablation"] in TARGET_KINDS]
        checks[f"{m}_auc_known_circuits"] = {"target": ">= 0.95 (patch, resample, mean)",
                                             "got": min(got) if got else None, "pass": bool(got) and min(got) >= 0.95}
    return {"name": "circuit_discovery_auc", "kind": "benchmark", "figures": {"rows": rows, "notes": notes,
                                                                             "wall_seconds": time.time() - t0},
            "checks": checks, "pass": all(c["pass"] for c in checks.values())}


def main(**kw: Any) -> dict[str, Any]:
    """Run the benchmark, print its results as one JSON line (machine included) and return them.

    Example: `main(steps=10, n_prompts=48)`, or `mechscope circuits`.
    """
    out = run_benchmark(**kw)
    out["machine"] = {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "gpu": None}
    print(json.dumps(out, default=float))
    return out


if __name__ == "__main__":  # pragma: no cover
    main()
