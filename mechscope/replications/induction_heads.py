"""induction-heads: Olsson et al. (2022) / Elhage et al. (2021) on the zoo's induction networks.

Networks: `induction` (2-layer attention-only, 3000 steps on 64-token contexts) with its log-spaced
checkpoints, and the 1-layer control `induction-1l` (`--quick`: `induction-short` and `induction-1l-short`,
the same recipe cut at 1500 steps, after the phase change; every target is the same). Seed s trains
`induction-seedS` and `induction-1l-seedS` (`-short-seedS` with `--quick`).
Heads are found by the tools, never named by hand:
    previous-token heads  layer-0 heads with previous-token score > 0.3 (`head_roles`)
    induction heads       layer-1 heads with prefix-matching score > 0.3 (`head_roles`)
The head-role probe is repeated random tokens r_1..r_n r_1..r_n with n the longest segment the
networks saw in training (the recipe's `seg_max`: 24; 32 prompts, seed 0); the figures also list the
scores at other n.

Checks:
1. loss_falls             repeat-segment loss (the recipe's fixed evaluation batch) falls by > 2 nats
                          from the first checkpoint to the last
2. sharp_drop             the loss drops by > 1 nat over the 1000 steps centred on the step where the
                          best layer-1 prefix-matching score first exceeds 0.3, and that step lies within
                          250 steps of the step where the loss has made half its total drop
3. previous_token_head    at least one layer-0 head with previous-token score > 0.3
4. ov_copying             every induction head's OV copying score sum(lambda)/sum(|lambda|) of
                          W_E W_V W_O W_U (layer norms folded) > 0.9, as stated
5. ov_copying_effective   the same with W_E replaced by each token's mean normalised residual entering
                          layer 1 (what the head's values actually read: the embedding plus the
                          position and layer-0 outputs), > 0.9; reported beside 4
6. k_composition          each induction head's mean K-composition with the previous-token heads exceeds
                          its largest K-composition with any other layer-0 head
7. control_no_induction   the 1-layer control's best prefix-matching score < 0.1, as stated
7b. control_no_induction_excess  the same minus the control's attention to the same offset (q to
                          q - n + 1) when the second half is fresh random tokens: the control attends
                          ~11 tokens back by position alone (0.13 without any repeat, measured on
                          the first recipe's `induction-1l` with 32-token contexts), which the plain
                          score counts as prefix matching; < 0.1
8. strict_induction       the strict-induction code (explanations.strict_induction) substituted for the
                          induction heads' attn.z recovers > 0.5 of the repeat-segment loss vs mean
                          ablation (reported with its CI, and vs resample ablation)
Extra figures: causal checks of the found heads (mean ablation), and the hand-written models
(`circuits.handwritten`, one- and two-token match) on the same evaluation batch.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.progress import progress_bar
from ..core.site import Kind, Site
from . import Check, Replication

PROBE_BATCH = 32
THRESH = 0.3


def _module_adapter(module):
    return module.mechscope_adapter()


def probe_n(hp: dict[str, Any]) -> int:
    """The probe's repeat length: the longest segment the network saw in training."""
    return int(hp["seg_max"])


def _other_n(hp: dict[str, Any]) -> list[int]:
    """Repeat lengths for the figures: 8 to the longest that fits the context twice."""
    top = (hp["n_ctx"] - 1) // 2
    return sorted({n for n in (8, 12, 16, 20, top) if n <= top and n != probe_n(hp)})


def _curve(name: str) -> list[dict[str, Any]]:
    """Repeat-segment loss and the best prefix-matching score per layer at every checkpoint."""
    from .. import zoo
    from ..circuits.head_roles import head_roles
    from ..zoo.recipes.induction import lm_losses

    run = zoo.open_run(name)
    cfg = run.config()
    hp = cfg["hparams"]
    data = zoo.RECIPES[cfg["recipe"]].data(hp, cfg["seed"])
    rows = []
    for step in progress_bar(run.checkpoint_steps(), desc=f"induction heads: checkpoints of {name}",
                             unit="checkpoint"):
        module = zoo.build_module(run, step)
        with torch.no_grad():
            _, rep_loss, rep_acc = lm_losses(module(data.ids), data)
        roles = head_roles(_module_adapter(module), n=probe_n(hp), batch=PROBE_BATCH, vocab=hp["d_vocab"])
        rows.append({"step": step, "repeat_loss": float(rep_loss), "repeat_acc": float(rep_acc),
                     "prefix_matching": [float(v) for v in roles.induction.max(1).values],
                     "previous_token": [float(v) for v in roles.previous_token.max(1).values]})
    return rows


@torch.no_grad()
def _effective_copying(model, hp: dict[str, Any], layer: int, heads: list[int]) -> list[float]:
    """Copying score with W_E replaced by each token's mean normalised residual entering `layer`."""
    from ..zoo.recipes.induction import make_batch

    w = model.weights(fold_ln=True)
    batch = make_batch(512, hp, torch.Generator().manual_seed(12345))
    r = model.run(batch.ids, capture=[Site(Kind.RESID_PRE, layer)]).cache[Site(Kind.RESID_PRE, layer)].double()
    if hp.get("layer_norm", False):  # the folded norm still centres and divides by the RMS
        r = r - r.mean(-1, keepdim=True)
        r = r / r.pow(2).mean(-1, keepdim=True).sqrt()
    V = w.W_E.shape[0]
    E = torch.stack([r[batch.ids == t].mean(0) for t in range(V)])  # (vocab, d_model)
    out = []
    for h in heads:
        small = w.W_O[layer, h].double() @ (w.W_U.double() @ E) @ w.W_V[layer, h].double()
        lam = torch.linalg.eigvals(small)
        out.append(float(lam.real.sum() / lam.abs().sum()))
    return out


@torch.no_grad()
def _positional_baseline(model, vocab: int, layer: int, n: int) -> dict[str, float]:
    """Prefix matching on the probe, and the same attention (query q to key q - n + 1) when the second half
    is fresh random tokens instead of a repeat: what a head gives that offset by position alone."""
    from ..circuits.head_roles import repeated_tokens

    ids = repeated_tokens(vocab, n, PROBE_BATCH, seed=0)
    fresh = ids.clone()
    fresh[:, n:] = torch.randint(0, vocab, (PROBE_BATCH, n), generator=torch.Generator().manual_seed(1))
    site = Site(Kind.PATTERN, layer)
    q = torch.arange(n, 2 * n)
    rep, base = (model.run(x, capture=[site]).cache[site][:, :, q, q - n + 1].mean((0, 2)) for x in (ids, fresh))
    best = int((rep - base).argmax())
    return {"excess": float((rep - base).max()), "head": best, "repeat": float(rep[best]), "no_repeat": float(base[best])}


def analyse(name: str, control: str) -> dict[str, Any]:
    """Every figure of the replication, from the trained zoo network `name` and the 1-layer control network
    `control`."""
    from .. import zoo
    from ..circuits.composition import composition_scores, copying_scores
    from ..circuits.explain import score
    from ..circuits.explanations import strict_induction
    from ..circuits.handwritten import evaluate_on_zoo_task, handwritten_induction
    from ..circuits.head_role_checks import causal_check
    from ..circuits.head_roles import head_roles
    from ..zoo.recipes.induction import make_batch

    curve = _curve(name)
    model = zoo.load_zoo(name)
    hp = model.zoo_run.config()["hparams"]
    V, n = hp["d_vocab"], probe_n(hp)
    roles = head_roles(model, n=n, batch=PROBE_BATCH, vocab=V)
    prev_heads = [int(h) for h in (roles.previous_token[0] > THRESH).nonzero().squeeze(1)]
    ind_heads = [int(h) for h in (roles.induction[1] > THRESH).nonzero().squeeze(1)]
    copy = copying_scores(model).detach()
    comp = composition_scores(model).k  # (l1, h1, l2, h2)
    kcomp = {}
    # every layer-0 head above the threshold: compare the best previous-token head with the rest instead
    k_prev = prev_heads if len(prev_heads) < hp["n_heads"] else [int(roles.previous_token[0].argmax())]
    for h in ind_heads:
        col = comp[0, :, 1, h]
        others = [g for g in range(hp["n_heads"]) if g not in k_prev]
        kcomp[h] = {"with_previous_token_heads": float(col[k_prev].mean()) if k_prev else None,
                    "max_with_other_heads": float(col[others].max()) if others else None}
    eff = _effective_copying(model, hp, 1, ind_heads) if ind_heads else []

    # explanation: strict induction in place of the induction heads, on a fresh batch of the task
    subst = None
    if ind_heads:
        batch = make_batch(256, hp, torch.Generator().manual_seed(777))
        ref = make_batch(256, hp, torch.Generator().manual_seed(778))
        subst = score(model, batch, "attn.z.1", strict_induction(model, 1), heads=ind_heads, reference=ref.ids,
                      dataset="zoo induction task, 256 sequences (seed 777)",
                      reference_name="256 sequences of the task (seed 778)", n_boot=500)

    causal = {}
    if ind_heads:
        causal["induction"] = causal_check(model, "induction", [(1, h) for h in ind_heads], n=n, n_boot=500)
    if prev_heads:
        causal["previous_token"] = causal_check(model, "previous_token", [(0, h) for h in prev_heads], n=n,
                                                n_boot=500)

    ctrl = zoo.load_zoo(control)
    other_n = _other_n(hp)
    ctrl_roles = {k: float(head_roles(ctrl, n=k, batch=PROBE_BATCH, vocab=V).induction.max())
                  for k in sorted([n, *other_n])}
    main_roles = {k: float(head_roles(model, n=k, batch=PROBE_BATCH, vocab=V).induction[1].max())
                  for k in other_n}
    ctrl_base = _positional_baseline(ctrl, V, 0, n)
    main_base = _positional_baseline(model, V, 1, n)
    hand = {"one_token_match": evaluate_on_zoo_task(handwritten_induction(), hp=hp),
            "two_token_match": evaluate_on_zoo_task(handwritten_induction(match=2), hp=hp)}
    trained_eval = evaluate_on_zoo_task(model, hp=hp)
    return {"curve": curve, "prev_heads": prev_heads, "ind_heads": ind_heads,
            "previous_token_scores_l0": [float(v) for v in roles.previous_token[0]],
            "prefix_matching_l1": [float(v) for v in roles.induction[1]],
            "copying": {h: float(copy[1, h]) for h in ind_heads}, "copying_effective": dict(zip(ind_heads, eff)),
            "k_composition": kcomp, "k_composition_previous_token_heads": k_prev, "substitution": subst,
            "causal": causal,
            "control_prefix_matching": ctrl_roles, "control_positional_baseline": ctrl_base,
            "layer1_positional_baseline": main_base, "prefix_matching_other_n": main_roles,
            "handwritten": hand, "trained_eval": trained_eval, "steps": hp["steps"], "probe_n": n}


def _sharp(curve: list[dict[str, Any]]) -> dict[str, Any]:
    """The drop of the repeat-segment loss over the 1000 steps centred on the step where the best layer-1
    prefix-matching score first exceeds 0.3 (nearest checkpoints inside the window), and the step where
    the loss has made half of its total drop."""
    steps = [r["step"] for r in curve]
    loss = [r["repeat_loss"] for r in curve]
    cross = next((r["step"] for r in curve if r["prefix_matching"][-1] > THRESH), None)
    half = (loss[0] + loss[-1]) / 2
    half_step = next((s for s, v in zip(steps, loss) if v < half), None)
    if cross is None:
        return {"prefix_matching_crosses_0.3_at": None, "half_drop_step": half_step, "drop": None, "window": None}
    inside = [i for i, s in enumerate(steps) if cross - 500 <= s <= cross + 500]
    i, j = inside[0], inside[-1]
    return {"prefix_matching_crosses_0.3_at": cross, "half_drop_step": half_step, "drop": loss[i] - loss[j],
            "window": [steps[i], steps[j]]}


def replicate(quick: bool = False, seed: int = 0, device: str | None = None) -> Replication:
    """Train (or reuse) the 2-layer induction network and its 1-layer control for `seed` (the short variants when
    `quick`), measure them and check the targets.

    Example: `replicate(quick=True)`, or `mechscope replicate induction-heads --quick`.
    """
    from .. import zoo

    variant = "-short" if quick else ""
    name, control = (zoo.spec(base + variant, seed=seed).name for base in ("induction", "induction-1l"))
    zoo.train(name, device=device)
    zoo.train(control, device=device)
    rep = build(analyse(name, control), quick)
    rep.seed = seed
    return rep


def build(f: dict[str, Any], quick: bool) -> Replication:
    """The checks and figures from `analyse`'s figures. `--quick` trains the same recipe for fewer steps
    and keeps every target."""
    need_prev, need_fall, need_copy = THRESH, 2.0, 0.9
    curve = f["curve"]
    fall = curve[0]["repeat_loss"] - curve[-1]["repeat_loss"]
    sh = _sharp(curve)
    prev_best = max(f["previous_token_scores_l0"])
    ind = f["ind_heads"]
    cross, half = sh["prefix_matching_crosses_0.3_at"], sh["half_drop_step"]
    same_point = cross is not None and half is not None and abs(cross - half) <= 250
    copy_vals = [round(f["copying"][h], 4) for h in ind]
    eff_vals = [round(f["copying_effective"][h], 4) for h in ind]
    kc = f["k_composition"]
    k_ok = bool(ind) and bool(f["prev_heads"]) and all(
        v["max_with_other_heads"] is not None and v["with_previous_token_heads"] > v["max_with_other_heads"]
        for v in kc.values())
    ctrl = f["control_prefix_matching"][f["probe_n"]]
    sub = f["substitution"]
    cb = f.get("control_positional_baseline")
    checks = [
        Check("loss_falls", f"repeat-segment loss falls by > {need_fall} nats over training",
              round(fall, 4), fall > need_fall, f"{curve[0]['repeat_loss']:.3f} -> {curve[-1]['repeat_loss']:.3f}"),
        Check("sharp_drop", "> 1 nat within the 1000 steps centred where layer-1 prefix matching first "
              "exceeds 0.3; that step within 250 steps of the loss's half-drop step",
              "prefix matching never exceeds 0.3" if cross is None else
              f"{sh['drop']:.3f} nats over {sh['window']}; PM > 0.3 at {cross}, half drop at {half}",
              cross is not None and sh["drop"] > 1 and same_point),
        Check("previous_token_head", f"a layer-0 head with previous-token score > {need_prev}", round(prev_best, 4),
              prev_best > need_prev, f"heads > {need_prev}: {f['prev_heads']}"),
        Check("ov_copying", f"every induction head's W_E W_V W_O W_U copying score > {need_copy}",
              f"L1 heads {ind}: {copy_vals}" if ind else "no induction head found",
              bool(ind) and min(copy_vals) > need_copy),
        Check("ov_copying_effective", f"the same with the token's residual entering layer 1 as W_E: > {need_copy}",
              f"{eff_vals}" if ind else "no induction head found", bool(ind) and min(eff_vals) > need_copy),
        Check("k_composition", "K-composition with the previous-token heads > with any other layer-0 head",
              f"previous-token heads L0 {f['k_composition_previous_token_heads']}; " + "; ".join(
                  f"L1H{h}: {d['with_previous_token_heads']:.3f} vs {d['max_with_other_heads']:.3f}"
                  for h, d in kc.items() if d["with_previous_token_heads"] is not None
                  and d["max_with_other_heads"] is not None) if kc else "no heads",
              k_ok, "when every layer-0 head passes the previous-token threshold, the best one is compared "
              "with the rest"),
        Check("control_no_induction", "1-layer control's prefix matching < 0.1", round(ctrl, 4), ctrl < 0.1,
              f"probe n={f['probe_n']}; other n: {f['control_prefix_matching']}"),
        Check("control_no_induction_excess", "1-layer control's prefix matching minus the same offset's "
              "attention without a repeat < 0.1 (beside 7)",
              None if cb is None else round(cb["excess"], 4), cb is not None and cb["excess"] < 0.1,
              "" if cb is None else f"head {cb['head']}: {cb['repeat']:.3f} with the repeat, {cb['no_repeat']:.3f} "
              f"without; the trained layer 1: {f['layer1_positional_baseline']['excess']:.3f}"),
        Check("strict_induction", "strict-induction code recovers > 0.5 of the loss vs mean ablation",
              None if sub is None else f"{sub.vs_mean.value:.3f} [{sub.vs_mean.ci[0]:.3f}, {sub.vs_mean.ci[1]:.3f}]; "
              f"vs resample {sub.vs_resample.value:.3f}",
              sub is not None and sub.vs_mean.value > 0.5),
    ]
    figures = {k: v for k, v in f.items() if k not in ("curve", "substitution", "causal")}
    figures["copying"] = {str(k): v for k, v in f["copying"].items()}
    figures["copying_effective"] = {str(k): v for k, v in f["copying_effective"].items()}
    figures["k_composition"] = {str(k): v for k, v in kc.items()}
    figures["sharp_drop"] = sh
    figures["curve"] = [{"step": r["step"], "repeat_loss": round(r["repeat_loss"], 4),
                         "prefix_matching_l1": round(r["prefix_matching"][-1], 4)} for r in curve]
    if sub is not None:
        figures["substitution"] = sub.describe()
    figures["causal"] = {k: {"metric": c.metric, "clean": c.clean, "ablated": c.ablated, "effect": c.effect.describe(),
                             "expect": c.expect, "pass": c.passed} for k, c in f["causal"].items()}
    loosened = ([f"no target: the runs are induction-short and induction-1l-short, the full recipe (64-token contexts, "
                 f"segments of 4 to 24 tokens) cut at {f['steps']} steps instead of 3000, so their weights are the "
                 "full runs' at that step; the phase change comes at 950-1150 steps on seeds 0-2"] if quick else [])
    return Replication("induction-heads", checks, figures, quick, loosened)
