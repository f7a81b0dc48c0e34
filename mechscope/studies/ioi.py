"""IOI on SmolLM2-135M: find the indirect-object circuit with EAP-IG, check it with exact patching,
and measure how faithful it is and how much that depends on the ablation.

Steps:
1. prompts: "When A and B went to the PLACE, B gave a OBJECT to" (and the B-and-A order), names,
   places and objects drawn (seeded) from lists of single-token words; the counterfactual swaps the
   second mention of the subject for the indirect object ("..., A gave a OBJECT to"), so that the
   right answer flips. Metric: logit(IO) - logit(S) at the last position;
2. EAP-IG (inputs interpolated between the counterfactual and the clean embeddings, `steps` steps)
   on every edge of the graph (heads' q/k/v inputs, MLPs, the output);
3. heads ranked by their summed outgoing edge scores (the first-order effect of patching the head);
   exact activation patching of every head's output (noising, counterfactual into clean) checks them;
4. the faithfulness curve of the EAP-IG ranking (counterfactual patch, edge level) against random
   circuits, with CPR and CMD;
5. a robustness table: the circuit of the smallest size on the curve with f >= `target`, re-scored
   under resample, mean, zero and counterfactual patching, node and edge level, with KL.

`main` prints everything and ends with one JSON line (figures, checks, wall time).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from ..causal import AblationSpec, activation_patching, eap_ig, faithfulness_curve, graph_of, robustness_report
from ..core import metrics
from ..core.progress import echo
from ..core.site import Kind, Site
from . import result_line

NAMES = ("Mary John Alice Bob Tom James Sarah Emma David Michael Anna Lisa Paul Mark Kate Jack Laura Peter "
         "Susan Daniel Rachel Chris Emily Jane Tim Sam Max Ben Amy Adam Eric Ryan Kevin Steve Helen Linda "
         "Karen Nancy Brian George Henry Rose Grace Lucy Jacob Oliver Ella Mia Leo Alex").split()
PLACES = "store park school market beach office garden station restaurant library hospital church".split()
OBJECTS = "drink book ball gift letter ring bag key pen phone cake flower".split()
TEMPLATE = "When{first} and{second} went to the {place},{s2} gave a {obj} to"


@dataclass(frozen=True)
class IOIConfig:
    """Settings of the study (all seeded)."""

    n_prompts: int = 32  # prompts in the dataset (and counterfactuals)
    steps: int = 5  # EAP-IG interpolation steps
    seed: int = 0  # prompt sampling, random circuits, resampling
    top_heads: int = 10  # heads listed and validated
    n_random: int = 1  # random circuits per size on the faithfulness curve
    target: float = 0.8  # the circuit for the robustness table: the smallest with f >= target
    reference_prompts: int = 64  # the distribution for mean and resample ablations
    model: str = "smollm2-135m"
    threads: int = 1  # torch threads: on a shared CPU one thread avoids OpenMP contention (10x faster here)
    device: str | None = None  # where the model runs (cpu, cuda, cuda:N, mps); None: the loader's default


@dataclass(frozen=True)
class IOIData:
    """IOI prompts: clean and counterfactual ids (prompt, pos), the indirect object's and subject's tokens
    (prompt,) and the texts."""

    clean: Tensor  # (prompt, pos)
    corrupt: Tensor  # (prompt, pos): the subject's second mention replaced by the indirect object
    io: Tensor  # (prompt,) indirect object token
    s: Tensor  # (prompt,) subject token
    texts: tuple[str, ...]


def make_prompts(tokenizer: Any, n: int, seed: int, templates: tuple[str, ...] = (TEMPLATE,)) -> IOIData:
    """`n` IOI prompts with name-swap counterfactuals, all of one token length; attempt i uses
    templates[i % len(templates)] (each with the fields of TEMPLATE), and prompts whose length
    differs from the first one's are skipped."""
    one = lambda w: len(tokenizer.encode(" " + w, add_special_tokens=False)) == 1  # noqa: E731
    names = [w for w in NAMES if one(w)]
    places = [w for w in PLACES if one(w)]
    objects = [w for w in OBJECTS if one(w)]
    if len(names) < 2 or not places or not objects:
        raise ValueError("the tokenizer splits too many of the name/place/object words")
    g = torch.Generator().manual_seed(seed)
    pick = lambda seq: seq[int(torch.randint(len(seq), (1,), generator=g))]  # noqa: E731
    clean, corrupt, io, s, texts = [], [], [], [], []
    attempt = 0
    while len(clean) < n:
        template = templates[attempt % len(templates)]
        attempt += 1
        a, b = pick(names), pick(names)
        if a == b:
            continue
        place, obj = pick(places), pick(objects)
        first, second = (a, b) if int(torch.randint(2, (1,), generator=g)) else (b, a)  # ABBA or BABA
        text = template.format(first=" " + first, second=" " + second, place=place, s2=" " + b, obj=obj)
        cf = template.format(first=" " + first, second=" " + second, place=place, s2=" " + a, obj=obj)
        ids = tokenizer.encode(text, add_special_tokens=False)
        cf_ids = tokenizer.encode(cf, add_special_tokens=False)
        if len(ids) != len(cf_ids) or (clean and len(ids) != len(clean[0])):
            continue
        clean.append(ids)
        corrupt.append(cf_ids)
        io.append(tokenizer.encode(" " + a, add_special_tokens=False)[0])
        s.append(tokenizer.encode(" " + b, add_special_tokens=False)[0])
        texts.append(text)
    return IOIData(torch.tensor(clean), torch.tensor(corrupt), torch.tensor(io), torch.tensor(s), tuple(texts))


def logit_diff(io: Tensor, s: Tensor) -> metrics.Metric:
    """logit(IO) - logit(S) at the last position, for any number of rows that repeat the prompts
    in order (a batched patching sweep runs the prompts once per job)."""
    def fn(logits: Tensor) -> Tensor:
        k = logits.shape[0] // io.shape[0]
        return metrics.logit_diff(io.repeat(k), s.repeat(k)).fn(logits)

    return metrics.Metric("logit_diff", fn, last_position_only=True)


def _spearman(a: Tensor, b: Tensor) -> float:
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def run_ioi(config: IOIConfig = IOIConfig(), progress: bool = True, log: Any = echo) -> dict[str, Any]:
    """The whole study; returns the figures (JSON-ready) and logs tables as it goes."""
    from ..models.load import load

    t0 = time.time()
    torch.set_num_threads(config.threads)
    model = load(config.model, device=config.device)
    data = make_prompts(model.tokenizer, config.n_prompts, config.seed)
    ref = make_prompts(model.tokenizer, config.reference_prompts, config.seed + 1)
    if ref.clean.shape[1] != data.clean.shape[1]:
        raise RuntimeError("reference prompts tokenised to another length")
    ld = logit_diff(data.io, data.s)
    graph = graph_of(model)
    log(f"{config.model}: {graph}; {config.n_prompts} prompts of {data.clean.shape[1]} tokens, e.g. {data.texts[0]!r}")
    with torch.no_grad():
        base = ld(model.run(data.clean).logits).float()
        cf = ld(model.run(data.corrupt).logits).float()
    log(f"logit difference IO - S: clean {base.mean():.3f} (IO on top of S in {(base > 0).float().mean():.0%} of "
        f"prompts), counterfactual {cf.mean():.3f}")
    figures: dict[str, Any] = {"clean_logit_diff": float(base.mean()), "counterfactual_logit_diff": float(cf.mean()),
                               "edges": graph.n_edges}

    # 2. EAP-IG over every edge
    t = time.time()
    spec = AblationSpec("patch", reference="name-swap counterfactuals", granularity="edge")
    scores = eap_ig(model, data.clean, ld, spec, steps=config.steps, reference_inputs=data.corrupt, graph=graph,
                    dataset=f"ioi-{config.n_prompts}", progress=progress)
    figures["eap_ig_seconds"] = time.time() - t
    figures["eap_ig_passes"] = {k: scores.how[k] for k in ("forward_passes", "backward_passes")}
    log(f"EAP-IG: {scores} ({figures['eap_ig_seconds']:.0f} s)")
    log("top edges: " + "; ".join(f"{e} {v:+.3f}" for e, v in scores.top(12)))

    # 3. heads by summed outgoing scores, validated by exact activation patching
    per_sender = torch.zeros(len(graph.senders), dtype=torch.float64)
    index = {n: i for i, n in enumerate(graph.senders)}
    for e, v in zip(graph.edges, scores.values.double().tolist()):
        per_sender[index[e.sender]] += v
    heads = [(i, n) for i, n in enumerate(graph.senders) if n.site.kind is Kind.Z]
    head_est = torch.tensor([float(per_sender[i]) for i, _ in heads])
    t = time.time()
    z_sites = [Site(Kind.Z, layer) for layer in range(graph.n_layers)]
    exact = activation_patching(model, data.clean, data.corrupt, z_sites, ld, direction="noising",
                                each_position=False, progress=progress)
    figures["patching_seconds"] = time.time() - t
    # the per-head tables compare with head_est on the CPU (float64 statistics): move the patching figures there
    real = (exact.values[:, :, 0].mean(-1) - exact.baseline.mean()).flatten().cpu()  # (layer * head,)
    order = head_est.abs().argsort(descending=True)[: config.top_heads].tolist()
    rows = []
    log(f"{'head':>8} {'EAP-IG (sum of out-edges)':>26} {'exact patching':>15}")
    for j in order:
        n = heads[j][1]
        rows.append({"head": f"L{n.site.layer}H{n.head}", "eap_ig": float(head_est[j]), "exact": float(real[j])})
        log(f"{rows[-1]['head']:>8} {rows[-1]['eap_ig']:>26.3f} {rows[-1]['exact']:>15.3f}")
    exact_top = set(real.abs().argsort(descending=True)[: config.top_heads].tolist())
    overlap = len(exact_top & set(order)) / config.top_heads
    rho = _spearman(head_est, real)
    corr = float(torch.corrcoef(torch.stack([head_est.double(), real.double()]))[0, 1])
    log(f"heads: Spearman(EAP-IG, exact) = {rho:.3f}, Pearson = {corr:.3f}, top-{config.top_heads} overlap = "
        f"{overlap:.0%} (exact patching: {exact.forward_passes} forward passes)")
    figures.update(top_heads=rows, head_spearman=rho, head_pearson=corr, top_head_overlap=overlap)

    # 4. faithfulness curve
    t = time.time()
    n = graph.n_edges
    sizes = sorted({0, 10, 30, 100, 300, 1000, 3000, 10000, 30000, n})
    curve = faithfulness_curve(model, data.clean, scores, ld, spec, sizes=[k for k in sizes if k <= n],
                               reference_inputs=data.corrupt, n_random=config.n_random, seed=config.seed,
                               dataset=f"ioi-{config.n_prompts}", max_rows=4 * config.n_prompts, progress=progress)
    figures["curve_seconds"] = time.time() - t
    log(str(curve))
    figures["curve"] = curve.rows()
    figures.update(cpr=curve.cpr, cmd=curve.cmd, random_cpr=curve.random_cpr, random_cmd=curve.random_cmd)

    # 5. robustness of one circuit
    good = [k for k, f in zip(curve.sizes, curve.values.tolist()) if f >= config.target and k > 0]
    k = good[0] if good else curve.sizes[-2]
    circuit = scores.circuit(k=k, name=f"EAP-IG top {k}")
    t = time.time()
    report = robustness_report(model, data.clean, circuit, ld, reference_inputs=ref.clean,
                               reference=f"ioi-{config.reference_prompts} (other names)", counterfactuals=data.corrupt,
                               dataset=f"ioi-{config.n_prompts}", seed=config.seed, graph=graph)
    figures["robustness_seconds"] = time.time() - t
    log(str(report))
    figures["robustness"] = [{**r, "ci": list(r["ci"])} for r in report.table()]
    figures["circuit_edges"] = k
    figures["circuit_nodes"] = len(circuit.nodes)
    wall = time.time() - t0
    figures["wall_seconds"] = wall
    patch_edge = next(r for r in report.table() if r["ablation"] == "patch" and r["level"] == "edge")
    checks = {
        "eap_ig_heads_agree_with_exact_patching": {"target": "Spearman >= 0.5", "got": rho, "pass": rho >= 0.5},
        "circuit_faithful": {"target": f">= {config.target} (patch, edge level)", "got": patch_edge["faithfulness"],
                             "pass": patch_edge["faithfulness"] >= config.target},
        "ranking_beats_random": {"target": "CPR > random CPR", "got": [curve.cpr, curve.random_cpr],
                                 "pass": curve.cpr > curve.random_cpr},
        "wall_time": {"target": "<= 1800 s", "got": wall, "pass": wall <= 1800},
    }
    return result_line("ioi_smollm2", "study", asdict(config), figures, checks)


def main(config: IOIConfig = IOIConfig(), progress: bool = True) -> dict[str, Any]:
    """Run the IOI study (`run_ioi`), print its figures as one JSON line and return them.

    Example: `main(IOIConfig(n_prompts=32))`, or `mechscope ioi --prompts 32`.
    """
    out = run_ioi(config, progress=progress)
    print(json.dumps(out, default=float))
    return out


if __name__ == "__main__":  # pragma: no cover
    main()
