"""SmolLM2-135M's induction heads with their attention written as code, measured on held-out repeated text.

Steps:
1. sequences: `head_roles.repeated_tokens`, BOS then n random tokens drawn uniformly from
   [1000, vocab) (ordinary word pieces, clear of the special and byte tokens), then the same n
   tokens again; three seeded sets: `select` sequences (seed s) choose the heads, `measure`
   sequences (seed s + 1, held out) are scored, `reference` sequences (seed s + 2) are what the
   mean and the resample ablations draw from;
2. heads: every head's induction score (`circuits.head_roles` on the selection sequences: attention
   from a second-copy token to the token after its first occurrence); the top k for k in `sizes`,
   and every head scoring above `threshold` (0.3, fixed before any loss was measured);
3. the hypothesis for a set of heads: at each layer holding some of them, one `Code` part on those
   heads' outputs (attn.z), `circuits.explanations.strict_induction`:
       code   where the head looks: query q attends to the position after each earlier occurrence
              of its own token (uniformly when there are several); a query whose token has not
              occurred before attends to position 0 (the BOS token, `fallback="first"`; chosen
              before measuring, the heads' own "nothing to copy" place)
       kept   what the head moves: its values v = norm(resid) W_V, captured in the same run (so
              they carry every upstream change), and its W_O; every other head, every MLP, the
              embeddings and the unembedding as is
   The control, `uniform_causal`, is the same value path with query q attending evenly to 0..q.
   Neither fits any number: the explanation's size is its lines of code (summed over the parts, one
   per layer, as `Hypothesis.size` counts) and 0 fitted numbers;
4. `causal.scrub` against mean ablation (each position's mean over the reference sequences) and
   resample ablation (each sequence's heads all taken from one reference sequence) of the same
   heads' outputs; the loss is the next-token cross-entropy over the predictable part of the
   repeated half (`explain_all.repeat_loss`), per sequence; loss recovered
   (L_ablated - L_code) / (L_ablated - L_clean) with a paired bootstrap interval over sequences.

`main` prints the heads and the table and ends with the result line. No target is set for the loss
recovered; the check is that the rule recovers more than the uniform control under both ablations,
for the threshold set of heads, with the two 95% intervals apart.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from ..causal.scrub import scrub
from ..circuits.explanations import Explanation, strict_induction, uniform_causal
from ..circuits.head_roles import head_roles, repeated_tokens
from ..core.hypothesis import Code, Component, Hypothesis
from ..core.progress import echo
from ..core.site import Kind, Site
from . import result_line
from .explain_all import repeat_loss

ExplainFn = Callable[[Any, int], Explanation]  # (model, layer) -> code for that layer's heads' outputs


@dataclass(frozen=True)
class InductionScrubConfig:
    """Settings of the study (all seeded)."""

    select: int = 32  # sequences that choose the heads
    measure: int = 24  # held-out sequences the hypotheses are scored on
    reference: int = 16  # sequences the ablations draw from
    half: int = 20  # random tokens in each copy
    sizes: tuple[int, ...] = (1, 2, 4, 8)  # top-k heads by induction score
    threshold: float = 0.3  # also: every head whose induction score is above this
    low: int = 1000  # tokens drawn from [low, vocab)
    fallback: str = "first"  # where the rule looks when the token has not occurred before
    seed: int = 0
    n_boot: int = 1000
    model: str = "smollm2-135m"
    threads: int = 1


def sequences(model: Any, n: int, half: int, seed: int, low: int) -> tuple[Tensor, Tensor]:
    """(ids, repeat): BOS (when the tokenizer has one), `half` random tokens twice; `repeat` marks the
    next-token targets of the predictable part of the second copy ((batch, pos - 1), over targets)."""
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    vocab = int(model.weights().W_E.shape[0])
    if not 0 <= low < vocab:
        raise ValueError(f"low={low} must lie in [0, {vocab}) (the model's vocabulary)")
    ids = repeated_tokens(vocab, half, n, seed, bos, low)
    off = 0 if bos is None else 1
    repeat = torch.zeros(n, ids.shape[1] - 1, dtype=torch.bool)
    repeat[:, off + half: off + 2 * half - 1] = True  # query in the second copy, target its next token
    return ids, repeat


def head_code_hypothesis(model: Any, heads: list[tuple[int, int]], explain: ExplainFn, name: str) -> Hypothesis:
    """One Code part per layer: `explain(model, layer)` in place of those heads' outputs (attn.z)."""
    by_layer: dict[int, list[int]] = {}
    for layer, h in heads:
        by_layer.setdefault(layer, []).append(h)
    parts = []
    for layer in sorted(by_layer):
        ex = explain(model, layer)
        parts.append(Code(Component(Site(Kind.Z, layer), heads=tuple(sorted(by_layer[layer]))), ex,
                          needs=ex.needs, lines=ex.lines, name=ex.name,
                          claim=str(ex.info.get("rule", ex.name)) + "; values and W_O the model's own"))
    return Hypothesis(f"{name} ({len(heads)} heads)", tuple(parts),
                      claim=f"the listed heads attend by the rule {name!r}; what they move is the model's own",
                      info={"heads": [f"L{layer}H{h}" for layer, h in heads]})


def rules(fallback: str) -> dict[str, ExplainFn]:
    """The two explanations the study compares: the strict-induction rule and the uniform control."""
    return {"strict_induction": lambda m, layer: strict_induction(m, layer, fallback=fallback),
            "uniform_causal": lambda m, layer: uniform_causal(m, layer)}


def head_sets(scores: Tensor, sizes: tuple[int, ...], threshold: float) -> list[tuple[str, list[tuple[int, int]]]]:
    """(label, heads): the top k by score for each k, then every head above `threshold`, best first."""
    order = [divmod(int(i), scores.shape[1]) for i in scores.flatten().argsort(descending=True)]
    out = [(f"top {k}", order[:k]) for k in sizes]
    above = [(layer, h) for layer, h in order if float(scores[layer, h]) > threshold]
    return out + [(f"score > {threshold}", above)]


def measure(model: Any, heads: list[tuple[int, int]], explain: dict[str, ExplainFn], data: Tensor, repeat: Tensor,
            reference: Tensor, *, ablations: tuple[str, ...] = ("mean", "resample"), n_boot: int = 1000,
            seed: int = 0, dataset: str = "held-out", loss: Callable[[Tensor, Any], Tensor] = repeat_loss,
            labels: Any = None) -> list[dict[str, Any]]:
    """One row per (explanation, ablation): the three losses, loss recovered with its interval, the size.
    The loss is `loss(logits, labels)` per sequence (default: `repeat_loss` with labels (data, repeat))."""
    labels = (data, repeat) if labels is None else labels
    rows = []
    for name, fn in explain.items():
        hyp = head_code_hypothesis(model, heads, fn, name)
        for abl in ablations:
            res = scrub(model, hyp, data, abl, labels=labels, loss=loss, reference=reference,
                        each=False, n_boot=n_boot, seed=seed, dataset=dataset)
            rows.append({"code": name, "ablation": abl, "recovered": res.recovered.value,
                         "ci": list(res.recovered.ci) if res.recovered.ci else None,
                         "loss_clean": res.loss_clean, "loss_code": res.loss_hypothesis,
                         "loss_ablated": res.loss_ablated, "lines": hyp.size.lines, "numbers": hyp.size.numbers,
                         "n": int(data.shape[0])})
    return rows


def run_study(config: InductionScrubConfig = InductionScrubConfig(), log: Any = echo,
              model: Any = None) -> dict[str, Any]:
    """The whole study on `model` (default: load `config.model`); returns the result line's object."""
    t0 = time.time()
    torch.set_num_threads(config.threads)
    if model is None:
        from ..models.load import load

        model = load(config.model)
    name = getattr(model, "name", config.model)
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    data, repeat = sequences(model, config.measure, config.half, config.seed + 1, config.low)
    ref, _ = sequences(model, config.reference, config.half, config.seed + 2, config.low)
    log(f"{name}: {config.select} selection, {config.measure} held-out, {config.reference} reference sequences of "
        f"{data.shape[1]} tokens (BOS {bos}, {config.half} random tokens twice, from [{config.low}, vocab))")

    t = time.time()
    roles = head_roles(model, n=config.half, batch=config.select, seed=config.seed, bos=bos, low=config.low)
    scores = roles.induction
    sets = head_sets(scores, config.sizes, config.threshold)
    log(f"induction scores on the selection sequences ({time.time() - t:.0f} s); top heads: " +
        ", ".join(f"L{layer}H{h} {float(scores[layer, h]):.2f}" for layer, h in sets[-1][1][:12]
                  or [divmod(int(i), scores.shape[1]) for i in scores.flatten().argsort(descending=True)[:5]]))

    explain = rules(config.fallback)
    table = []
    log(f"{'heads':<14}{'code':<18}{'ablation':<10}{'recovered':>10}  {'95% CI':<18}{'L clean':>8}{'L code':>8}"
        f"{'L abl':>8}{'lines':>6}{'nums':>5}")
    for label, heads in sets:
        if not heads:
            log(f"{label:<14}no head")
            table.append({"heads": label, "k": 0, "which": [], "rows": []})
            continue
        t = time.time()
        same = next((done for done in table if done["which"] == [f"L{layer}H{h}" for layer, h in heads]), None)
        if same is not None:  # the same heads as an earlier set: the same runs, measured once
            log(f"{label:<14}the same {len(heads)} heads as {same['heads']}")
            rows = same["rows"]
        else:
            rows = measure(model, heads, explain, data, repeat, ref, n_boot=config.n_boot, seed=config.seed,
                           dataset=f"repeated random tokens, {config.measure} held-out sequences (seed {config.seed + 1})")
        for r in rows:
            ci = "-" if r["ci"] is None else f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"
            log(f"{label:<14}{r['code']:<18}{r['ablation']:<10}{r['recovered']:>10.3f}  {ci:<18}"
                f"{r['loss_clean']:>8.3f}{r['loss_code']:>8.3f}{r['loss_ablated']:>8.3f}{r['lines']:>6}{r['numbers']:>5}")
        table.append({"heads": label, "k": len(heads), "which": [f"L{layer}H{h}" for layer, h in heads],
                      "rows": rows, "seconds": time.time() - t})

    checks: dict[str, dict[str, Any]] = {}
    last = table[-1]
    for abl in ("mean", "resample"):
        got = {r["code"]: r for r in last["rows"] if r["ablation"] == abl}
        key = f"rule_beats_uniform_{abl}"
        if not got:
            checks[key] = {"target": "strict-induction code recovers more than the uniform control",
                           "got": f"no head scored above {config.threshold}", "pass": False}
            continue
        s, u = got["strict_induction"], got["uniform_causal"]
        apart = s["ci"] is not None and u["ci"] is not None and s["ci"][0] > u["ci"][1]
        checks[key] = {"target": f"strict-induction code recovers more than the uniform control ({abl} ablation, "
                                 f"heads scoring > {config.threshold}; 95% intervals apart)",
                       "got": f"{s['recovered']:.4f} {s['ci']} vs {u['recovered']:.4f} {u['ci']}", "pass": bool(apart)}
    figures = {"induction_scores": [[round(float(x), 4) for x in row] for row in scores],
               "table": table, "wall_seconds": time.time() - t0,
               "rule_lines": explain["strict_induction"](model, 0).lines,
               "uniform_lines": explain["uniform_causal"](model, 0).lines}
    return result_line("induction_scrub_smollm2", "replication", asdict(config), figures, checks)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`python -m mechscope.studies.induction_scrub [--json] [--measure N] [--sizes 1,2,4,8] [--threshold 0.3]`."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print only the result line")
    d = InductionScrubConfig
    p.add_argument("--select", type=int, default=d.select)
    p.add_argument("--measure", type=int, default=d.measure)
    p.add_argument("--reference", type=int, default=d.reference)
    p.add_argument("--half", type=int, default=d.half, help="random tokens in each copy")
    p.add_argument("--sizes", default=",".join(map(str, d.sizes)))
    p.add_argument("--threshold", type=float, default=d.threshold)
    p.add_argument("--fallback", choices=("first", "uniform", "self"), default=d.fallback,
                   help="where the rule looks when the query's token has not occurred before")
    p.add_argument("--n-boot", type=int, default=d.n_boot)
    a = p.parse_args(argv)
    cfg = InductionScrubConfig(select=a.select, measure=a.measure, reference=a.reference, half=a.half,
                               sizes=tuple(int(x) for x in a.sizes.split(",")), threshold=a.threshold,
                               fallback=a.fallback, n_boot=a.n_boot)
    out = run_study(cfg, log=(lambda *_: None) if a.json else echo)
    print(json.dumps(out, default=float))
    return out


if __name__ == "__main__":  # pragma: no cover
    main()
