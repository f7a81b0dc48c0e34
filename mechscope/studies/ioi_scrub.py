"""The IOI circuit of SmolLM2-135M as a causal-scrubbing hypothesis, measured on held-out prompts.

Steps:
1. prompts: `make_prompts` over six templates of one token length ("When A and B went to the PLACE,
   B gave a OBJECT to", "After ...", "While A and B were at the ...", ...), seeded. The first
   `select` prompts choose the heads; the next `measure` prompts (held out) are scored; a third
   set (another seed: other names, places and objects) is the reference the resamples draw from;
2. heads found on the selection prompts only:
   - every head's effect on the logit difference (IO minus S at the last position) when its output
     is patched, at every position at once, from other IOI prompts (seed 2; what the resample
     ablation does) by exact activation patching, one run per head (`--rank-by name-swap` patches
     from the name-swap counterfactuals instead,
     `--first-order` uses attribution patching's estimate); the circuit of k heads is the k heads
     whose removal lowers the logit difference most (`--order abs`: the k largest effects of
     either sign);
   - classes: a head whose effect (first-order, per position) sits at the last position is a
     name mover when it attends from
     the last position to the indirect object more than to the subject's second mention and raises
     the logit difference, a negative (or backup) name mover when it attends to IO but lowers it,
     an S-inhibition head when it attends to S2 more than to IO, "other" when it attends to
     neither (< 0.2); a head whose effect sits at
     S2 (or before) is a duplicate-token or an induction head, whichever of `head_roles`' scores
     (on repeated random tokens) is higher;
3. the hypothesis, for the top k heads (k = 5, 10, 20, 40): the circuit's heads as is, every other
   attention head's output resampled from another IOI prompt (any: the claim is that outside the
   circuit no head carries anything the task needs, so every IOI prompt is equivalent there);
   MLPs, embeddings and the unembedding as is;
4. `causal.scrub` with the loss -(logit IO - logit S), so loss recovered is the share of the logit
   difference recovered, (LD_hypothesis - LD_ablated) / (LD_clean - LD_ablated), against a resample
   ablation of every head (each prompt's heads all taken from one other reference prompt), with a
   paired bootstrap interval over the held-out prompts.

`main` prints the heads and the table and ends with the result line (check: >= 0.80 under resample).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from ..causal import AblationSpec, activation_patching, attribution_patching
from ..causal.scrub import scrub
from ..circuits.head_roles import head_roles
from ..core.hypothesis import AsIs, Component, Hypothesis, Resampled
from ..core.progress import echo
from ..core.run import run
from ..core.site import Kind, Site
from . import result_line
from .ioi import IOIData, logit_diff, make_prompts

TEMPLATES = (
    "When{first} and{second} went to the {place},{s2} gave a {obj} to",
    "After{first} and{second} went to the {place},{s2} gave a {obj} to",
    "While{first} and{second} were at the {place},{s2} handed a {obj} to",
    "Then{first} and{second} went to the {place},{s2} brought a {obj} to",
    "Once{first} and{second} got to the {place},{s2} passed a {obj} to",
    "Later{first} and{second} walked to the {place},{s2} sent a {obj} to",
)


@dataclass(frozen=True)
class ScrubConfig:
    """Settings of the study (all seeded)."""

    select: int = 64  # prompts that choose the heads
    measure: int = 200  # held-out prompts the hypotheses are scored on
    reference: int = 200  # prompts the resamples draw from (another seed)
    sizes: tuple[int, ...] = (5, 10, 20, 40)  # circuit sizes (heads)
    seed: int = 0
    target: float = 0.8
    n_boot: int = 1000
    baselines: bool = True  # also score no head kept and every head kept (which must give exactly 1)
    model: str = "smollm2-135m"
    threads: int = 1
    exact: bool = True  # rank heads by exact per-head patching (else its first-order estimate)
    rank_by: str = "resample"  # patch from other IOI prompts, as the ablation does ("resample"), or the name swaps
    order: str = "raises"  # keep only heads that raise the logit difference, most first, or rank by size ("abs")


def _rows(d: IOIData, sl: slice) -> IOIData:
    return IOIData(d.clean[sl], d.corrupt[sl], d.io[sl], d.s[sl], d.texts[sl])


def neg_logit_diff(output: Tensor, labels: Tensor) -> Tensor:
    """The scrub loss: -(logit IO - logit S) at the last position; labels are (prompt, 2) = (IO, S)."""
    last = output[:, -1].double()
    rows = torch.arange(last.shape[0])
    return -(last[rows, labels[:, 0]] - last[rows, labels[:, 1]])


def every_ioi_prompt(ids: Tensor) -> Tensor:
    """One class: the hypothesis treats every IOI prompt alike outside the circuit."""
    return torch.zeros(ids.shape[0], dtype=torch.long)


def circuit_hypothesis(n_layers: int, n_heads: int, heads: list[tuple[int, int]], name: str = "") -> Hypothesis:
    """The circuit's heads as is; every other head's output resampled from any other IOI prompt."""
    keep: dict[int, list[int]] = {}
    for layer, h in heads:
        keep.setdefault(layer, []).append(h)
    parts = []
    for layer in range(n_layers):
        site = Site(Kind.Z, layer)
        inside = sorted(keep.get(layer, []))
        outside = [h for h in range(n_heads) if h not in inside]
        if inside:
            parts.append(AsIs(Component(site, heads=tuple(inside))))
        if outside:
            parts.append(Resampled(Component(site, heads=tuple(outside)), every_ioi_prompt,
                                   claim="carries nothing the IOI task needs"))
    return Hypothesis(name or f"IOI circuit ({len(heads)} heads)", tuple(parts),
                      claim="the listed heads (with the MLPs, embeddings and unembedding) compute the logit "
                            "difference; every other head's output may come from any other IOI prompt",
                      info={"heads": [f"L{layer}H{h}" for layer, h in heads]})


def find_heads(model: Any, data: IOIData, exact: bool = True, progress: bool = False,
               source: Tensor | None = None) -> list[dict[str, Any]]:
    """Every head with its patching effect, where it acts, its attention at the last position and role scores,
    ranked by the absolute effect; each gets a class (module docstring).

    The ranking effect is exact activation patching of the head's output at every position at once
    (`exact`, one patched run per head) or the first-order estimate; where the effect sits (the last
    position or earlier) always comes from the first-order estimate per position. The ranking
    patches from the name-swap counterfactuals, or from `source` (other IOI prompts, as the
    resample ablation does) when given.
    """
    n_layers = model.n_layers
    z = [Site(Kind.Z, layer) for layer in range(n_layers)]
    ld = logit_diff(data.io, data.s)
    res = attribution_patching(model, data.clean, data.corrupt, z, ld, direction="noising")
    eff = (res.values - res.baseline).mean(-1)  # (layer, head, pos): change of the logit difference
    n_heads = eff.shape[1]
    if exact:
        ex = activation_patching(model, data.clean, data.corrupt if source is None else source, z, ld,
                                 direction="noising", each_position=False,
                                 progress=progress)
        total_eff = (ex.values[:, :, 0] - ex.baseline).mean(-1)  # (layer, head)
    elif source is None:
        total_eff = eff.sum(-1)
    else:
        first = attribution_patching(model, data.clean, source, z, ld, direction="noising", each_position=False)
        total_eff = (first.values[:, :, 0] - first.baseline).mean(-1)
    rows = torch.arange(data.clean.shape[0])
    s2 = (data.clean != data.corrupt).float().argmax(1)
    io_pos = (data.clean == data.io[:, None]).float().argmax(1)
    pats = run(model, data.clean, capture=[Site(Kind.PATTERN, layer) for layer in range(n_layers)]).cache
    att_io = torch.stack([pats[Site(Kind.PATTERN, layer)][rows, :, -1, io_pos].mean(0) for layer in range(n_layers)])
    att_s2 = torch.stack([pats[Site(Kind.PATTERN, layer)][rows, :, -1, s2].mean(0) for layer in range(n_layers)])
    roles = head_roles(model, n=20, batch=8, seed=0)
    out = []
    for i in total_eff.abs().flatten().argsort(descending=True).tolist():
        layer, h = divmod(i, n_heads)
        e = eff[layer, h]
        at_end = float(e[-1].abs()) >= 0.5 * float(e.abs().sum())
        # removing the head lowers the logit difference (effect < 0) when the head raises it
        raises = float(total_eff[layer, h]) < 0
        if at_end:
            if max(float(att_io[layer, h]), float(att_s2[layer, h])) < 0.2:
                cls = "other (last position)" if raises else "other negative (last position)"
            elif float(att_io[layer, h]) >= float(att_s2[layer, h]):
                cls = "name mover" if raises else "negative/backup name mover"
            else:
                cls = "S-inhibition"
        else:
            dup, ind = float(roles.duplicate_token[layer, h]), float(roles.induction[layer, h])
            cls = "duplicate-token" if dup >= ind else "induction"
        out.append({"head": f"L{layer}H{h}", "layer": layer, "index": h, "class": cls,
                    "effect": float(total_eff[layer, h]), "first_order": float(e.sum()),
                    "effect_at_end": float(e[-1]), "attn_io": float(att_io[layer, h]),
                    "attn_s2": float(att_s2[layer, h]), "duplicate_token": float(roles.duplicate_token[layer, h]),
                    "induction": float(roles.induction[layer, h])})
    return out


def run_study(config: ScrubConfig = ScrubConfig(), log: Any = echo, progress: bool = False) -> dict[str, Any]:
    """The whole study; returns the result (JSON-ready) and logs as it goes."""
    from ..models.load import load

    t0 = time.time()
    torch.set_num_threads(config.threads)
    model = load(config.model)
    allp = make_prompts(model.tokenizer, config.select + config.measure, config.seed, TEMPLATES)
    sel, test = _rows(allp, slice(0, config.select)), _rows(allp, slice(config.select, None))
    ref = make_prompts(model.tokenizer, config.reference, config.seed + 1, TEMPLATES)
    if ref.clean.shape[1] != allp.clean.shape[1]:
        raise RuntimeError("reference prompts tokenised to another length")
    log(f"{config.model}: {config.select} selection, {config.measure} held-out, {config.reference} reference "
        f"prompts over {len(TEMPLATES)} templates, {allp.clean.shape[1]} tokens, e.g. {test.texts[0]!r}")

    t = time.time()
    source = None
    if config.rank_by == "resample":
        source = make_prompts(model.tokenizer, config.select, config.seed + 2, TEMPLATES).clean
    heads = find_heads(model, sel, exact=config.exact, progress=progress, source=source)
    select_s = time.time() - t
    log(f"heads ranked on the selection prompts ({select_s:.0f} s):")
    for r in heads[: max(config.sizes)]:  # by the size of the effect
        log(f"  {r['head']:>7} {r['class']:<27} effect {r['effect']:+.3f} (at end {r['effect_at_end']:+.3f}) "
            f"attn IO {r['attn_io']:.2f} S2 {r['attn_s2']:.2f} dup {r['duplicate_token']:.2f} "
            f"ind {r['induction']:.2f}")

    n_heads = len(heads) // model.n_layers
    ranked = heads if config.order == "abs" else sorted([r for r in heads if r["effect"] < 0],
                                                        key=lambda r: r["effect"])
    labels = torch.stack([test.io, test.s], 1)
    spec = AblationSpec("resample", reference=f"ioi-{config.reference} (seed {config.seed + 1})", seed=config.seed)
    table = []
    sizes = list(config.sizes) + ([0, len(heads)] if config.baselines else [])
    for k in sizes:
        t = time.time()
        chosen = [(r["layer"], r["index"]) for r in (heads if k == len(heads) else ranked)[:k]]
        hyp = circuit_hypothesis(model.n_layers, n_heads, chosen)
        res = scrub(model, hyp, test.clean, spec, labels=labels, loss=neg_logit_diff, reference=ref.clean,
                    each=False, n_boot=config.n_boot, seed=config.seed, dataset=f"ioi-held-out-{config.measure}")
        sc = res.recovered
        classes: dict[str, int] = {}
        for r in (heads if k == len(heads) else ranked)[:k]:
            classes[r["class"]] = classes.get(r["class"], 0) + 1
        row = {"heads": k, "recovered": sc.value, "ci": list(sc.ci), "n": config.measure,
               "ld_clean": -res.loss_clean, "ld_hypothesis": -res.loss_hypothesis, "ld_ablated": -res.loss_ablated,
               "classes": classes, "seconds": time.time() - t}
        table.append(row)
        log(f"  top {k:>3} heads: recovered {sc.value:.3f} [{sc.ci[0]:.3f}, {sc.ci[1]:.3f}] (n={config.measure}); "
            f"logit diff clean {row['ld_clean']:.3f}, hypothesis {row['ld_hypothesis']:.3f}, "
            f"ablated {row['ld_ablated']:.3f} ({row['seconds']:.0f} s)")

    wall = time.time() - t0
    main_rows = [r for r in table if r["heads"] in config.sizes]
    best = max(main_rows, key=lambda r: r["recovered"])
    good = [r for r in main_rows if r["recovered"] >= config.target]
    smallest = good[0] if good else None
    checks = {
        "recovered_under_resample": {
            "target": f">= {config.target} of the logit difference (resample, {config.measure} held-out prompts, "
                      f"at most {max(config.sizes)} heads)",
            "got": best["recovered"] if smallest is None else smallest["recovered"],
            "pass": smallest is not None},
    }
    if config.baselines:
        checks["all_as_is_is_exact"] = {"target": "hypothesis with every head kept recovers 1",
                                        "got": table[-1]["recovered"], "pass": abs(table[-1]["recovered"] - 1) < 1e-6}
    figures = {"heads": heads[: max(config.sizes)], "kept_order": [r["head"] for r in ranked[: max(config.sizes)]],
               "table": table, "select_seconds": select_s, "wall_seconds": wall,
               "smallest_circuit_at_target": None if smallest is None else smallest["heads"],
               "templates": list(TEMPLATES)}
    return result_line("ioi_scrub_smollm2", "replication", asdict(config), figures, checks)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`python -m mechscope.studies.ioi_scrub [--json] [--measure N] [--sizes 5,10,20,40]`."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print only the result line")
    p.add_argument("--select", type=int, default=ScrubConfig.select)
    p.add_argument("--measure", type=int, default=ScrubConfig.measure)
    p.add_argument("--reference", type=int, default=ScrubConfig.reference)
    p.add_argument("--sizes", default=",".join(map(str, ScrubConfig.sizes)))
    p.add_argument("--rank-by", choices=("resample", "name-swap"), default=ScrubConfig.rank_by)
    p.add_argument("--order", choices=("abs", "raises"), default=ScrubConfig.order,
                   help="rank heads by the size of their effect, or only those that raise the logit difference")
    p.add_argument("--no-baselines", action="store_true", help="skip the no-head and every-head hypotheses")
    p.add_argument("--first-order", action="store_true", help="rank heads by the first-order estimate")
    a = p.parse_args(argv)
    cfg = ScrubConfig(select=a.select, measure=a.measure, reference=a.reference,
                      sizes=tuple(int(x) for x in a.sizes.split(",")), rank_by=a.rank_by, exact=not a.first_order,
                      order=a.order, baselines=not a.no_baselines)
    out = run_study(cfg, log=(lambda *_: None) if a.json else echo)
    print(json.dumps(out, default=float))
    return out


if __name__ == "__main__":  # pragma: no cover
    main()
