"""Head roles of a real model, each checked by ablation, and the logit lens on a few prompts.

Steps (`mechscope heads MODEL`, SmolLM2-135M by default):
1. the repeated-random-token probe ([BOS] r_1..r_n r_1..r_n, tokens drawn from ids >= `low` so that
   special tokens stay out): previous-token, duplicate-token, induction (prefix matching) and BOS
   scores of every head (`circuits.head_roles`);
2. copy suppression on the same probe: the OV eigenvalue and diagonal scores of the full OV
   circuit and the attention-weighted direct effect on the predicted token
   (`circuits.copy_suppression_scores`); the OV copying score of every head beside its role;
3. heads are named by thresholds stated in the output, never by hand: previous-token, duplicate-token
   and induction heads score > `threshold`; copy-suppression heads have both OV scores negative and
   suppression > `threshold`; resting heads put > `bos_threshold` of their attention on the first
   token. A role with no head above its threshold takes its best-scoring head, and says so;
4. each listed head is mean-ablated alone, and then every head named for the role together, and the
   behaviour the role names is measured with a bootstrap interval (`circuits.causal_check`):
   removing induction heads raises the loss on the repeat, removing previous-token (and duplicate-
   token) heads lowers the downstream prefix matching, removing copy suppression raises the predicted
   token's logit where it occurred earlier, removing a resting head changes the next-token
   distributions little (KL < 0.1 nats). Each result says pass or fail as measured;
5. the logit lens (final norm recomputed per layer) on factual prompts: the rank of the expected
   next token at every layer.

`main` prints the tables and ends with one JSON line (figures, checks, wall time).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..circuits import causal_check, copy_suppression_scores, copying_scores, head_roles, logit_lens
from ..circuits.head_roles import top_heads
from ..core.progress import note

LENS_PROMPTS = (("The capital of France is", " Paris"),
                ("The Eiffel Tower is in the city of", " Paris"),
                ("Monday, Tuesday, Wednesday,", " Thursday"),
                ("One, two, three, four,", " five"))


@dataclass(frozen=True)
class HeadStudyConfig:
    """Settings of the head-role study: the model, the probe's length, batch, thresholds naming the roles and
    bootstrap resamples."""

    model: str = "smollm2-135m"
    n: int = 20  # length of the random segment (the probe is 2n tokens after BOS)
    batch: int = 16
    seed: int = 0
    low: int = 1000  # random tokens are drawn from [low, vocab): no special or byte tokens
    threshold: float = 0.3
    bos_threshold: float = 0.9  # a resting head puts more than this share of its attention on the first token
    top: int = 5  # heads listed per role
    n_boot: int = 500
    threads: int = 1
    device: str | None = None  # where the model runs (cpu, cuda, cuda:N, mps); None: the loader's default


def _pick(scores: torch.Tensor, threshold: float, min_layer: int = 0) -> tuple[list[tuple[int, int]], bool]:
    """Heads with score > threshold (in layers >= min_layer), or the single best one; and whether any passed."""
    s = scores.clone()
    s[:min_layer] = float("-inf")
    above = [(int(l), int(h)) for l, h in (s > threshold).nonzero()]
    if above:
        return above, True
    i = int(s.flatten().argmax())
    return [divmod(i, s.shape[1])], False


def analyse(model: Any, cfg: HeadStudyConfig, bos: int | None, tokenizer: Any = None) -> dict[str, Any]:
    """Every figure of the study on an adapter model (no printing)."""
    V = int(model.weights().W_E.shape[0])
    probe = dict(n=cfg.n, batch=cfg.batch, seed=cfg.seed, bos=bos)
    with torch.no_grad():
        roles = head_roles(model, vocab=V, low=cfg.low, **probe)
        cs = copy_suppression_scores(model, vocab=V, **probe)
        copy = copying_scores(model).detach()
    t = cfg.threshold
    prev, prev_ok = _pick(roles.previous_token, t)
    first_prev = min(l for l, _ in prev)
    # an induction head needs an earlier previous-token head to compose with
    ind, ind_ok = _pick(roles.induction, t, min_layer=first_prev + 1)
    dup, dup_ok = _pick(roles.duplicate_token, t)
    rest, rest_ok = _pick(roles.bos, cfg.bos_threshold)
    supp = cs.heads(t)
    supp_ok = bool(supp)
    if not supp:  # the head with the strongest suppression among those with negative OV scores, else overall
        cand = torch.where((cs.ov_eigen < 0) & (cs.ov_diag < 0), cs.suppression, torch.full_like(cs.suppression, -9))
        if float(cand.max()) <= -9:
            cand = cs.suppression
        i = int(cand.flatten().argmax())
        supp = [divmod(i, cand.shape[1])]

    def row(l: int, h: int) -> dict[str, Any]:
        return {"head": f"L{l}H{h}", "previous_token": float(roles.previous_token[l, h]),
                "induction": float(roles.induction[l, h]), "duplicate_token": float(roles.duplicate_token[l, h]),
                "bos": float(roles.bos[l, h]), "ov_copying": float(copy[l, h]), "ov_diag": float(cs.ov_diag[l, h]),
                "suppression": float(cs.suppression[l, h])}

    # the causal checks' own probe (another seed, twice the sequences): its head roles once for all
    # checks that look for downstream induction heads
    check_probe = dict(n=cfg.n, batch=2 * cfg.batch, seed=cfg.seed + 10, bos=bos, vocab=V)
    with torch.no_grad():
        check_roles = head_roles(model, **check_probe)

    def check(role: str, heads: list[tuple[int, int]]) -> dict[str, Any]:
        c = causal_check(model, role, heads, n_boot=cfg.n_boot, roles=check_roles, **check_probe)
        return {"heads": [f"L{l}H{h}" for l, h in c.heads], "behaviour": c.metric, "clean": c.clean,
                "ablated": c.ablated, "effect": c.effect.value, "ci": list(c.effect.ci),
                "expected": c.expect, "pass": c.passed, "score": str(c.effect)}

    # for the ranking of copy suppression: heads with a positive OV copying score rank last
    negative_ov = cs.suppression.masked_fill(~(cs.ov_eigen < 0), -9)
    parts, checks, per_head = {}, {}, {}
    for role, heads, found, key, ranking in (
            ("previous_token", prev, prev_ok, roles.previous_token, roles.previous_token),
            ("duplicate_token", dup, dup_ok, roles.duplicate_token, roles.duplicate_token),
            ("induction", ind, ind_ok, roles.induction, roles.induction),
            ("copy_suppression", supp, supp_ok, cs.suppression, negative_ov),
            ("bos", rest, rest_ok, roles.bos, roles.bos)):
        listed = sorted(heads, key=lambda lh: -float(key[lh]))[: cfg.top]
        parts[role] = {"found": found, "heads": [row(l, h) for l, h in listed], "top": top_heads(ranking, cfg.top)}
        checks[role] = check(role, heads)  # every head named for the role, ablated together
        per_head[role] = [check(role, [lh]) for lh in listed]  # and each listed head alone
    parts["bos"] = {"found": rest_ok, "threshold": cfg.bos_threshold, **parts["bos"]}

    lens = []
    if tokenizer is not None:
        for prompt, answer in LENS_PROMPTS:
            ids = tokenizer.encode(prompt, add_special_tokens=False)
            target = tokenizer.encode(answer, add_special_tokens=False)
            if len(target) != 1:
                continue
            with torch.no_grad():
                ll = logit_lens(model, torch.tensor([ids]))
            ranks = [int(r) for r in ll.rank_of(target[0])]
            top = [tokenizer.decode([int(x)]) for x in ll.top(1)[:, 0]]
            first = next((i for i, r in enumerate(ranks) if all(x == 0 for x in ranks[i:])), None)
            lens.append({"prompt": prompt, "answer": answer, "rank_per_layer": ranks, "top1_per_layer": top,
                         "answer_top_from_layer": first})
    return {"probe": {**probe, "low": cfg.low, "vocab": V}, "threshold": t,
            **{k: parts[k] for k in ("previous_token", "duplicate_token", "induction", "bos", "copy_suppression")},
            "causal": checks, "causal_per_head": per_head, "logit_lens": lens,
            "roles": {"previous_token": roles.previous_token.tolist(), "induction": roles.induction.tolist(),
                      "duplicate_token": roles.duplicate_token.tolist(), "bos": roles.bos.tolist(),
                      "ov_copying": copy.tolist(), "ov_diag": cs.ov_diag.tolist(),
                      "suppression": cs.suppression.tolist()}}


def main(cfg: HeadStudyConfig, console: Any = None) -> dict[str, Any]:
    """Run the head-role study, print its tables and one JSON result line, and return that line.

    Example: `main(HeadStudyConfig(model="smollm2-135m"))`, or `mechscope heads smollm2-135m`.
    """
    from rich.console import Console
    from rich.table import Table

    from ..models.load import load

    con = console or Console()
    torch.set_num_threads(cfg.threads)
    t0 = time.monotonic()
    note(f"heads {cfg.model}: loading, then head-role probes, ablations and the logit lens")
    model = load(cfg.model, device=cfg.device)
    tok = getattr(model, "tokenizer", None)
    bos = None if tok is None else tok.bos_token_id
    f = analyse(model, cfg, bos, tok)
    seconds = time.monotonic() - t0

    p = f["probe"]
    con.print(f"[bold]{cfg.model}[/]: head roles on repeated random tokens (BOS {bos}, n = {p['n']}, "
              f"{p['batch']} sequences, seed {p['seed']}, tokens >= {p['low']}); threshold {cfg.threshold}")
    for role, key in (("previous_token", "previous_token"), ("duplicate_token", "duplicate_token"),
                      ("induction", "induction"), ("copy_suppression", "suppression"), ("bos", "bos")):
        part = f[role]
        thr = cfg.bos_threshold if role == "bos" else cfg.threshold
        tab = Table(title=f"{role.replace('_', '-')} heads" + ("" if part["found"] else
                                                               f" (none above {thr}: the best one)"))
        for col in ("head", "previous_token", "induction", "duplicate_token", "bos", "ov_copying", "ov_diag",
                    "suppression"):
            tab.add_column(col, justify="right", style="bold" if col == key else None)
        for r in part["heads"]:
            tab.add_row(r["head"], *(f"{r[c]:+.3f}" for c in ("previous_token", "induction", "duplicate_token", "bos",
                                                              "ov_copying", "ov_diag", "suppression")))
        con.print(tab)
    tab = Table(title="causal checks: the role's heads mean-ablated together")
    for col in ("role", "heads", "behaviour", "clean", "ablated", "effect [95% CI]", "expected", "pass"):
        tab.add_column(col)
    for role, c in f["causal"].items():
        tab.add_row(role, " ".join(c["heads"]), c["behaviour"], f"{c['clean']:.3f}", f"{c['ablated']:.3f}",
                    f"{c['effect']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]", c["expected"],
                    "yes" if c["pass"] else "NO")
    con.print(tab)
    tab = Table(title="causal checks: each listed head mean-ablated alone")
    for col in ("role", "head", "clean", "ablated", "effect [95% CI]", "expected", "pass"):
        tab.add_column(col)
    for role, rows_ in f["causal_per_head"].items():
        for c in rows_:
            tab.add_row(role, c["heads"][0], f"{c['clean']:.3f}", f"{c['ablated']:.3f}",
                        f"{c['effect']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]", c["expected"],
                        "yes" if c["pass"] else "NO")
    con.print(tab)
    if f["logit_lens"]:
        tab = Table(title="logit lens: rank of the expected token after each layer (0 = top; final norm recomputed)")
        tab.add_column("prompt")
        tab.add_column("answer")
        tab.add_column("ranks (embeddings, then each block)")
        tab.add_column("top from layer")
        for r in f["logit_lens"]:
            tab.add_row(r["prompt"], repr(r["answer"]), " ".join(str(x) for x in r["rank_per_layer"]),
                        str(r["answer_top_from_layer"]))
        con.print(tab)
    checks = {f"{role}_causal": {"target": c["expected"], "got": round(c["effect"], 4), "pass": c["pass"]}
              for role, c in f["causal"].items()}
    for role, rows_ in f["causal_per_head"].items():
        ok = [c["heads"][0] for c in rows_ if c["pass"]]
        checks[f"{role}_causal_per_head"] = {"target": f"each listed head: {rows_[0]['expected'] if rows_ else ''}",
                                             "got": f"{len(ok)} of {len(rows_)} ({' '.join(ok)})",
                                             "pass": bool(rows_) and len(ok) == len(rows_)}
    line = {"name": "heads", "kind": "study", "model": cfg.model, "config": asdict(cfg),
            "figures": {k: f[k] for k in ("probe", "threshold", "previous_token", "duplicate_token", "induction",
                                          "copy_suppression", "bos", "causal", "causal_per_head", "logit_lens")},
            "checks": checks, "pass": all(c["pass"] for c in checks.values()), "seconds": round(seconds, 1)}
    con.print(f"wall time {seconds:.1f} s")
    print(json.dumps(line))
    return line
