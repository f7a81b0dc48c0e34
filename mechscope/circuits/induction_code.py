"""Every part of the zoo induction network replaced at once by code derived from it.

`zoo:induction` is a two-layer attention-only transformer (4 heads per layer, layer norms) trained on
random tokens with a repeated segment (mechscope.zoo.recipes.induction); its loss is measured on the
predictable part of the second copy. The tools say what each part does (head_roles, attention
patterns, copying and K-composition scores; `python -m mechscope.circuits.induction_code` prints them):

    layer 0   head 2 attends to the previous token (previous-token score 0.96); heads 1 and 3 attend
              mostly two tokens back (0.51 and 0.77 of their attention at offset 2); head 0 attends to
              itself and its recent past. On random tokens these patterns are positional: they hardly
              depend on the tokens (total variation to the batch-mean pattern 0.02-0.10).
    layer 1   all four heads are induction heads (prefix matching 0.85-0.87, OV copying 0.999) that
              match two tokens: the key's previous token against the query's token (K-composition
              with the previous-token head) and the key's token two back against the query's
              previous token (the two-back heads); with no match, heads 1 and 3 rest on position 0.

The code (`induction_parts`), one part per component, all substituted in one forward pass:

    embed            the token's embedding row W_E[t]: the network's own table, kept as it is (so this
                     part recovers 1 alone by construction). The token identity is what every later
                     rule moves; the table itself is not explained further.
    layer-0 heads    each head attends to exactly one key a fixed offset back (0: itself, 1: the previous
                     token, 2: two back); the offset is the one where the head's mean attention on the
                     training sequences is largest (one number per head). `layer0="positional"` instead
                     computes the pattern as the network's QK circuit restricted to positions: causal
                     softmax of the head's own query and key maps applied to (mean token embedding +
                     position embedding) through its layer norm (no fitted number).
    layer-1 heads    attention by token matches: pattern[q, k] = causal softmax over keys of
                         a * [token k-1 == token q] + b * [token k-2 == token q-1]
                     with a and b per head fitted on training sequences (least cross-entropy to the
                     network's own patterns at the measured queries; `fit_rule`). `features=` adds
                     [k == 0], [k == q], [k == q - 1] (the network's resting places).
    every head       the head's output z[q] = sum_k pattern[q, k] v[k] with the head's own values v
                     (its W_V applied, in the same forward pass, to the residual the code has built so
                     far); the model then applies its own W_O. Where a head looks is the code's; what it
                     moves is the network's (its OV circuit, as the network computes it).
    unembedding      the final layer norm divides by one constant instead of each position's own RMS (the
                     constant whose predictions are closest, in KL, to the network's at the measured
                     positions of the training sequences; 1 fitted number); W_U is the network's.
    pos_embed        kept as the network's table: it does not depend on the input, so its mean and
                     resample ablations are itself and there is nothing to recover. `constant_position=True`
                     replaces it by its mean over positions (the claim "position matters only through the
                     attention patterns"); the command reports what that costs.

`copy_token=True` goes one step further for the layer-1 heads: each moves the value of the attended
token alone (`token_values`: its layer norm and W_V applied to W_E[token] plus the mean of the rest of
the residual, d_model fitted numbers), so nothing of the network's forward pass is read at all.

`measure_jointly` substitutes all parts at once (core `run` with a list of `Replace`) and compares
with the same components mean-ablated (per position over reference sequences) and resample-ablated
(every component from the same reference sequence): loss recovered = (L_ablated - L_code) /
(L_ablated - L_clean), token-pooled over the measured targets, with a paired bootstrap CI over
sequences. `table` also measures each part alone (only it replaced) and every part left out of the
joint substitution (where the unexplained share sits).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import math
import platform
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.hypothesis import Code, Component, Hypothesis
from ..core.interventions import Context, Intervention, Mean, Replace, Resample
from ..core.run import run
from ..core.site import Kind, Site
from ..models import wrap
from .explain import _losses, _recovered

TRAIN_SEED, HELD_OUT_SEED, REFERENCE_SEED = 1, 777, 778
MATCH_FEATURES = ("match_current", "match_previous", "first", "self", "previous")
TWO_TOKEN_MATCH = ("match_current", "match_previous")  # the rule's default: the two matches alone


# --- attention patterns by rule ------------------------------------------------------------------

def _causal(T: int, device: torch.device | None = None) -> Tensor:
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def _back(ids: Tensor, n: int) -> Tensor:
    """The token n positions back; -n where there is none (so two missing tokens never match)."""
    out = torch.full_like(ids, -n)
    out[:, n:] = ids[:, : ids.shape[1] - n]
    return out


def match_features(ids: Tensor, offset: int = 0) -> Tensor:
    """(batch, q, k, 5) float indicators, in the order of MATCH_FEATURES:
    token k-1 == token q; token k-2 == token q-1; k == 0; k == q; k == q - 1.
    `offset` > 0 moves the two match features `offset` keys later (a deliberately wrong rule)."""
    b, T = ids.shape
    prev_q = _back(ids, 1)  # the query's previous token
    key1, key2 = _back(ids, 1 + offset), _back(ids, 2 + offset)  # the key's previous two tokens
    q, k = torch.arange(T, device=ids.device)[:, None], torch.arange(T, device=ids.device)[None, :]
    feats = [ids[:, :, None] == key1[:, None, :],
             prev_q[:, :, None] == key2[:, None, :],
             (k == 0).expand(b, T, T), (k == q).expand(b, T, T), (k == q - 1).expand(b, T, T)]
    return torch.stack(feats, -1).float()


def match_pattern(ids: Tensor, weights: Tensor, offset: int = 0) -> Tensor:
    """(batch, q, k): causal softmax over keys of match_features(ids, offset) @ weights."""
    s = match_features(ids, offset) @ weights.float().to(ids.device)
    return s.masked_fill(~_causal(ids.shape[1], s.device), float("-inf")).softmax(-1)


@torch.no_grad()
def positional_patterns(model: Any, layer: int = 0) -> Tensor:
    """(head, q, k): each head's causal softmax of its own query and key maps applied to the mean token
    embedding plus each position's embedding, through the layer's norm (the QK circuit on positions)."""
    model = wrap(model)
    w = model.weights()
    if layer != 0:
        raise ValueError("positional patterns read the embeddings: only layer 0 sees nothing else")
    x = w.W_E.float().mean(0) + w.W_pos.float()  # (pos, d_model)
    x = F.layer_norm(x, x.shape[-1:], w.ln1_w[layer].float(), w.ln1_b[layer].float())
    q = torch.einsum("pm,hmd->hpd", x, w.W_Q[layer].float()) + w.b_Q[layer].float()[:, None]
    k = torch.einsum("pm,hmd->hpd", x, w.W_K[layer].float()) + w.b_K[layer].float()[:, None]
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return s.masked_fill(~_causal(x.shape[0], s.device), float("-inf")).softmax(-1)


def offset_pattern(T: int, offset: int) -> Tensor:
    """(q, k): every query attends to the key `offset` positions back (to position 0 when there is none)."""
    pat = torch.zeros(T, T)
    q = torch.arange(T)
    pat[q, (q - offset).clamp_min(0)] = 1
    return pat


@torch.no_grad()
def attention_offsets(model: Any, ids: Tensor, layer: int = 0) -> list[int]:
    """Per head of `layer`: the offset q - k at which its mean attention on `ids` is largest."""
    site = Site(Kind.PATTERN, layer)
    pat = run(wrap(model), ids, capture=[site]).cache[site]  # (batch, head, q, k)
    T = pat.shape[-1]
    by_offset = torch.stack([pat.diagonal(-d, dim1=-2, dim2=-1).mean((0, -1)) for d in range(T)], -1)
    return [int(d) for d in by_offset.argmax(-1)]


def fit_rule(patterns: Tensor, ids: Tensor, query_mask: Tensor, features: Sequence[str] = MATCH_FEATURES,
             steps: int = 200) -> Tensor:
    """The MATCH_FEATURES weights minimising the cross-entropy of the rule's pattern against `patterns`
    (batch, q, k) of one head, over the queries in `query_mask` (batch, q); only `features` are fitted,
    the others stay 0. Convex; L-BFGS."""
    unknown = set(features) - set(MATCH_FEATURES)
    if unknown:
        raise ValueError(f"unknown features {sorted(unknown)}; choose from {MATCH_FEATURES}")
    dev = patterns.device  # fitted where the patterns are
    keep = torch.tensor([n in features for n in MATCH_FEATURES], device=dev)
    feats, P, qm = match_features(ids.to(dev))[..., keep], patterns.float(), query_mask.to(dev).float()
    causal = _causal(ids.shape[1], dev)
    w = torch.zeros(feats.shape[-1], device=dev, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logp = (feats @ w).masked_fill(~causal, -1e9).log_softmax(-1)
        loss = -((P * logp).sum(-1) * qm).sum() / qm.sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    out = torch.zeros(len(MATCH_FEATURES), device=dev)
    out[keep] = w.detach()
    return out


# --- the parts ------------------------------------------------------------------------------------

def head_code(layer: int, pattern_of, value_table: Tensor | None = None) -> Any:
    """An ExplanationFn for attn.z of `layer`: z[q] = sum_k pattern[q, k] v[k] for every head, where
    pattern_of(ids) -> (batch, head, q, k) is the rule and v the head's own values in this run, or,
    with `value_table` (vocab, head, d_head), the value of the token at k read from that table."""
    vsite = Site(Kind.V, layer)

    def fn(x: Tensor, ctx: Context) -> Tensor:
        if ctx.input_ids is None:
            raise ValueError("the head rules read the tokens; this run has none")
        # (batch, pos, head, d_head)
        v = ctx.cache[vsite] if value_table is None else value_table[ctx.input_ids.to(value_table.device)]
        pat = pattern_of(ctx.input_ids.to(v.device)).to(v.dtype)  # (batch, head, q, k)
        return torch.einsum("bhqk,bkhd->bqhd", pat, v).to(x.dtype)

    fn.needs = (vsite,) if value_table is None else ()
    return fn


@torch.no_grad()
def token_values(model: Any, train_data: Any, layer: int) -> Tensor:
    """(vocab, head, d_head): each head's value of a token alone -- its layer norm and W_V applied to the
    token's embedding plus the mean of everything else in the residual it reads (position and earlier
    heads) on `train_data` (d_model fitted numbers)."""
    model = wrap(model)
    w = model.weights()
    pre, emb = Site(Kind.RESID_PRE, layer), Site(Kind.EMBED)
    cache = run(model, train_data.ids, capture=[pre, emb]).cache
    rest = (cache[pre] - cache[emb]).float().mean((0, 1))  # (d_model,)
    x = F.layer_norm(w.W_E.float() + rest, rest.shape, w.ln1_w[layer].float(), w.ln1_b[layer].float())
    return torch.einsum("tm,hmd->thd", x, w.W_V[layer].float()) + w.b_V[layer].float()


def token_embedding(W_E: Tensor) -> Any:
    """The token's own row of the network's embedding table (kept: not explained further)."""
    def fn(x: Tensor, ctx: Context) -> Tensor:
        return W_E[ctx.input_ids.to(W_E.device)].to(x.dtype)

    fn.needs = ()
    return fn


def mean_position(W_pos: Tensor) -> Any:
    """One vector for every position: the mean of the network's position embeddings."""
    mean = W_pos.mean(0)

    def fn(x: Tensor, ctx: Context) -> Tensor:
        return mean.to(x.dtype).expand_as(x)

    fn.needs = ()
    return fn


def constant_divisor(c: float) -> Any:
    """The final norm divides every position by the same number `c`."""
    def fn(x: Tensor, ctx: Context) -> Tensor:
        return torch.full_like(x, c)

    fn.needs = ()
    return fn


def _query_mask(batch: Any) -> Tensor:
    """(batch, pos) queries whose next-token target is measured (the Batch's mask is over targets)."""
    qm = torch.zeros(batch.ids.shape, dtype=torch.bool, device=batch.ids.device)
    qm[:, :-1] = batch.repeat
    return qm


@torch.no_grad()
def fit_divisor(model: Any, train_data: Any) -> float:
    """The constant divisor of the final norm whose next-token distributions are closest (mean KL from
    the network's) to the network's own at the measured positions of `train_data`. One number."""
    model = wrap(model)
    w = model.weights()
    last = Site(Kind.RESID_POST, model.n_layers - 1)
    res = run(model, train_data.ids, capture=[last])
    qm = _query_mask(train_data).to(res.logits.device)
    x = res.cache[last][qm].float()
    xc = x - x.mean(-1, keepdim=True)
    target = res.logits[qm].float().log_softmax(-1)

    g, beta, W_U, b_U = (t.detach().float() for t in (w.lnf_w, w.lnf_b, w.W_U, w.b_U))  # no grads into the model

    def kl(log_c: Tensor) -> Tensor:
        logits = (xc / log_c.exp() * g + beta) @ W_U + b_U
        return (target.exp() * (target - logits.log_softmax(-1))).sum(-1).mean()

    log_c = torch.zeros((), device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([log_c], max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = kl(log_c)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return float(log_c.exp())


def _code_lines(*fns) -> int:
    """Lines of code of the functions that make up a rule (signature and body; no blank lines,
    comments or docstrings)."""
    total = 0
    for f in fns:
        src = textwrap.dedent(inspect.getsource(f))
        body = ast.parse(src).body[0].body
        first = body[0]
        is_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
            first.value.value, str)
        doc = range(first.lineno, first.end_lineno + 1) if is_doc else range(0)
        total += sum(1 for i, line in enumerate(src.splitlines(), 1)
                     if i not in doc and line.strip() and not line.strip().startswith("#"))
    return total


@torch.no_grad()
def induction_parts(model: Any, train_data: Any, *, layer0: str = "offset",
                    features: Sequence[str] = TWO_TOKEN_MATCH, constant_position: bool = False,
                    induction_offset: int = 0, copy_token: bool = False) -> list[dict[str, Any]]:
    """The code for every component (see the module docstring), fitted on `train_data` (a zoo induction
    Batch). Dicts with name, site, heads, fn (an ExplanationFn with `needs`), lines (lines of code of
    the rule), fitted (numbers fitted on `train_data`), weights (what the code takes from the network)
    and ablate (whether the component depends on the input and so has mean and resample ablations).

    layer0             "offset": each layer-0 head attends to one key, a fixed offset back (the offset of its
                       largest mean attention on `train_data`); "positional": the network's QK on positions
    features           the MATCH_FEATURES the layer-1 rules use (the others are 0)
    constant_position  also replace the position embedding by its mean (see the module docstring)
    induction_offset   move the layer-1 rules' matches this many keys later (a deliberately wrong rule)
    copy_token         layer-1 heads move the value of the attended token alone (`token_values`) instead
                       of their own values in the run
    """
    model = wrap(model)
    w = model.weights()
    H = model.n_heads
    cfg = getattr(getattr(model, "module", None), "cfg", None)
    if cfg is None or cfg.n_layers != 2 or not cfg.attn_only or not cfg.layer_norm or w.W_pos is None:
        raise ValueError("induction_parts explains a two-layer attention-only TinyTransformer with layer norm "
                         "and learned positions (the zoo's `induction` recipe); load one with zoo.load_zoo")
    parts: list[dict[str, Any]] = [dict(
        name="embed", site=Site(Kind.EMBED), heads=None, fn=token_embedding(w.W_E.detach()), ablate=True,
        lines=_code_lines(token_embedding), fitted=0, numbers={}, rule="the token's row of W_E",
        weights="W_E (the network's table, kept)")]
    if constant_position:
        parts.append(dict(name="pos_embed", site=Site(Kind.POS_EMBED), heads=None, ablate=False,
                          fn=mean_position(w.W_pos.detach()), lines=_code_lines(mean_position), fitted=0, numbers={},
                          rule="the mean position embedding at every position", weights="W_pos (averaged)"))

    if layer0 == "positional":
        pat0 = positional_patterns(model, 0)  # (head, q, k)
        lines0, fitted0 = _code_lines(positional_patterns, head_code), 0
        how0 = "positional: QK on (mean token + position); mean attention at offsets 0/1/2 = {}"
    elif layer0 == "offset":
        offsets = attention_offsets(model, train_data.ids, 0)
        T = train_data.ids.shape[1]
        pat0 = torch.stack([offset_pattern(T, d) for d in offsets])
        lines0, fitted0 = _code_lines(offset_pattern, head_code), 1
        how0 = "attend to the key {} back"
    else:
        raise ValueError(f"layer0 must be 'offset' or 'positional', got {layer0!r}")
    for h in range(H):
        fn = head_code(0, lambda t: pat0[:, : t.shape[1], : t.shape[1]].expand(t.shape[0], -1, -1, -1))
        top = torch.stack([pat0[h].diagonal(-d)[4:].mean() for d in range(3)])  # attention at offsets 0, 1, 2
        rule = how0.format(", ".join(f"{float(v):.2f}" for v in top) if layer0 == "positional" else offsets[h])
        parts.append(dict(name=f"L0H{h}", site=Site(Kind.Z, 0), heads=[h], fn=fn, ablate=True, lines=lines0,
                          fitted=fitted0, rule=rule,
                          numbers={"offset": torch.tensor([float(offsets[h])])} if layer0 == "offset" else {}, weights="values: W_V, b_V (after ln1)" + (
                              "; pattern: mean W_E, W_pos, ln1, W_Q, W_K, b_Q, b_K" if layer0 == "positional" else "")))

    pat1 = Site(Kind.PATTERN, 1)
    clean = run(model, train_data.ids, capture=[pat1]).cache[pat1]
    qm = _query_mask(train_data)
    lines1 = _code_lines(_back, match_features, match_pattern, head_code)
    table1 = token_values(model, train_data, 1) if copy_token else None
    for h in range(H):
        wts = fit_rule(clean[:, h], train_data.ids, qm, features)
        fn = head_code(1, lambda t, wts=wts: match_pattern(t, wts, induction_offset)[:, None].expand(-1, H, -1, -1),
                       table1)
        parts.append(dict(name=f"L1H{h}", site=Site(Kind.Z, 1), heads=[h], fn=fn, ablate=True,
                          lines=lines1 + (_code_lines(token_values) if copy_token else 0),
                          fitted=len(features) + (0 if h or not copy_token else model.weights().W_E.shape[1]),
                          numbers={"match_weights": wts[[MATCH_FEATURES.index(f) for f in features]].detach()},
                          rule="two-token-match induction: " + ", ".join(
                              f"{n} {float(v):+.2f}" for n, v in zip(MATCH_FEATURES, wts) if n in features),
                          weights="values: " + ("ln1, W_V, b_V on W_E[token] + the mean rest of the residual"
                                                if copy_token else "W_V, b_V (after ln1)")))

    c = fit_divisor(model, train_data)
    parts.append(dict(name="unembed", site=Site(Kind.LN_FINAL_SCALE), heads=None, fn=constant_divisor(c),
                      ablate=True, lines=_code_lines(constant_divisor), fitted=1, numbers={"divisor": torch.tensor([c])},
                      rule=f"final norm divides by the constant {c:.3f}",
                      weights="ln_final weight and bias, W_U, b_U"))
    return parts


def induction_hypothesis(model: Any, train_data: Any = None, *, n: int = 256, **options: Any) -> Hypothesis:
    """`induction_parts` as a `Hypothesis` (one `Code` part per component) for `causal.scrub` and
    `mechscope explain-all induction`. The rules are fitted on `train_data`, by default `n` sequences
    drawn from the recipe's task with the training seed (`TRAIN_SEED`), never on the data they are
    scored on; `options` go to `induction_parts`."""
    if train_data is None:
        from ..zoo.recipes.induction import make_batch  # the task the network was trained on

        zoo_run = getattr(model, "zoo_run", None)
        if zoo_run is None:
            raise ValueError("induction_hypothesis needs `train_data` (a zoo induction Batch) for a network "
                             "that is not a zoo run")
        train_data = make_batch(n, zoo_run.config()["hparams"], torch.Generator().manual_seed(TRAIN_SEED))
    if options.get("copy_token"):
        raise ValueError("induction_hypothesis: copy_token's value table is not counted as numbers of a Code "
                         "part; measure that variant with `measure_jointly`")
    parts = induction_parts(model, train_data, **options)
    code = []
    for p in parts:
        heads = None if p["heads"] is None else tuple(p["heads"])
        code.append(Code(Component(p["site"], heads=heads), p["fn"], needs=tuple(getattr(p["fn"], "needs", ())),
                         lines=p["lines"], numbers=p["numbers"], name=p["name"],
                         fitted_on=f"{len(train_data.ids)} training sequences", claim=p["rule"]))
    return Hypothesis("zoo:induction as code", tuple(code),
                      claim="every head attends by a positional or token-match rule and moves its own values; "
                            "the final norm divides by a constant",
                      info={"weights_kept": {p["name"]: p["weights"] for p in parts}})


# --- measuring ------------------------------------------------------------------------------------

def _where(part: dict[str, Any]) -> dict[str, Any]:
    return {} if part["heads"] is None else {"heads": list(part["heads"])}


@torch.no_grad()
def measure_jointly(model: Any, parts: Sequence[dict[str, Any]], data: Any, reference: Any, *, n_boot: int = 1000,
                    seed: int = 0, dataset: str = "held-out sequences of the task") -> dict[str, Any]:
    """Loss recovered when every part in `parts` stands in for its component at once.

    data, reference  zoo induction Batches (the loss is on `data.repeat`; the ablations read `reference`)
    Returns the four token-pooled losses (clean, code, mean, resample), the mean KL divergence of the
    code's next-token distributions from the network's on the measured targets (nats; 0 only when the
    code predicts as the network does -- the loss can be recovered by more than 1 while KL > 0), and
    Scores vs mean and resample ablation of the same components, all at once (resample takes every
    component from the same reference sequence). Parts with ablate=False (independent of the input, e.g.
    the position embedding) are replaced in the code run and left as they are in the ablated runs (their
    ablations are themselves).
    """
    model = wrap(model)
    ids, mask = data.ids, data.repeat
    ablated = [p for p in parts if p.get("ablate", True)]
    if not ablated:
        raise ValueError("no part has an input-dependent component to ablate")
    ref = run(model, reference.ids, capture=sorted({p["site"] for p in ablated})).cache
    needs = sorted({s for p in parts for s in getattr(p["fn"], "needs", ())})
    runs: dict[str, list[Intervention]] = {
        "clean": [],
        "code": [Replace(p["site"], fn=p["fn"], **_where(p)) for p in parts],
        "mean": [Mean.of(p["site"], ref[p["site"]], **_where(p)) for p in ablated],
        "resample": [Resample(p["site"], source=ref[p["site"]], seed=seed, **_where(p)) for p in ablated],
    }
    logits = {k: run(model, ids, capture=needs if k == "code" else [], interventions=ivs).logits
              for k, ivs in runs.items()}
    losses = {k: _losses(lg, ids, mask, None) for k, lg in logits.items()}
    net, code = (logits[k][:, :-1][mask].double().log_softmax(-1) for k in ("clean", "code"))
    kl = float((net.exp() * (net - code)).sum(-1).mean())  # how far the code's predictions are from the network's
    keep = losses["clean"][1] > 0
    losses = {k: (s[keep], c[keep]) for k, (s, c) in losses.items()}
    pooled = {k: float(s.sum() / c.sum()) for k, (s, c) in losses.items()}
    how = {"components": [p["name"] for p in parts], "loss": "next-token cross-entropy on the repeat",
           "reference_n": int(reference.ids.shape[0])}
    scores = {kind: _recovered(losses[kind], losses["code"], losses["clean"], {**how, "ablation": kind}, dataset,
                               seed, n_boot) for kind in ("mean", "resample")}
    return {"loss_clean": pooled["clean"], "loss_code": pooled["code"], "loss_mean_ablated": pooled["mean"],
            "loss_resample_ablated": pooled["resample"], "kl_network_to_code": kl, "vs_mean": scores["mean"],
            "vs_resample": scores["resample"]}


def _score_dict(r: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.describe() if hasattr(v, "describe") else v) for k, v in r.items()}


@torch.no_grad()
def table(model: Any, parts: Sequence[dict[str, Any]], data: Any, reference: Any, *, n_boot: int = 1000,
          seed: int = 0) -> dict[str, Any]:
    """Every part alone (only it replaced), every part left out of the joint substitution (all others
    replaced: where the unexplained share sits) and all parts jointly."""
    rows = []
    for i, p in enumerate(parts):
        alone = measure_jointly(model, [p], data, reference, n_boot=n_boot, seed=seed) if p.get("ablate", True) \
            else None
        rest = [q for j, q in enumerate(parts) if j != i]
        without = measure_jointly(model, rest, data, reference, n_boot=n_boot, seed=seed)
        rows.append({"name": p["name"], "site": p["site"].name, "heads": p["heads"], "rule": p["rule"],
                     "weights": p["weights"], "lines": p["lines"], "fitted": p["fitted"],
                     "alone": None if alone is None else _score_dict(alone), "all_but_this": _score_dict(without)})
    joint = measure_jointly(model, parts, data, reference, n_boot=n_boot, seed=seed)
    return {"rows": rows, "joint": _score_dict(joint)}


@torch.no_grad()
def _findings(model: Any, hp: dict[str, Any]) -> dict[str, Any]:
    """What the tools say about each head: probe roles, OV copying and K-composition with layer 0."""
    from .composition import composition_scores, copying_scores
    from .head_roles import head_roles

    roles = head_roles(model, n=int(hp["seg_max"]), batch=32, vocab=int(hp["d_vocab"]))
    copy = copying_scores(model)
    kcomp = composition_scores(model).k[0, :, 1, :]  # (layer-0 head, layer-1 head)
    f = lambda t: " ".join(f"{float(v):.2f}" for v in t)  # noqa: E731
    lines = [f"head roles (repeated random tokens, n={hp['seg_max']}): previous-token L0 {f(roles.previous_token[0])}; "
             f"prefix matching L1 {f(roles.induction[1])}; position 0 L1 {f(roles.bos[1])}",
             f"OV copying L1 {f(copy[1])}; K-composition of each L1 head with L0 heads 0-3: "
             + "; ".join(f"L1H{h} {f(kcomp[:, h])}" for h in range(kcomp.shape[1]))]
    return {"lines": lines, "previous_token_l0": roles.previous_token[0].tolist(),
            "prefix_matching_l1": roles.induction[1].tolist(), "copying_l1": copy[1].tolist(),
            "k_composition": kcomp.tolist()}


def _fmt(score: dict[str, Any] | None, kind: str) -> str:
    if score is None:
        return "   n/a (no input-dependent part)"
    s = score[kind]
    lo, hi = s["ci"] if s.get("ci") else (float("nan"), float("nan"))
    return f"{s['value']:7.4f} [{lo:.4f}, {hi:.4f}]"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: replace every part of a zoo induction network by code and print the loss recovered; returns
    the exit code.

    Example: `python -m mechscope.circuits.induction_code --n 256 --json`.
    """
    ap = argparse.ArgumentParser(prog="python -m mechscope.circuits.induction_code",
                                 description="Replace every part of zoo:induction by code; loss recovered.")
    ap.add_argument("--model", default="induction", help="zoo name of the network (default: induction)")
    ap.add_argument("--n", type=int, default=256, help="sequences in the training, held-out and reference sets")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--layer0", choices=("offset", "positional"), default="offset",
                    help="layer-0 rule of the main table: one fixed offset per head, or the QK circuit on positions")
    ap.add_argument("--json", action="store_true", help="print the whole table as JSON before the result line")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    from .. import zoo  # the zoo's task and networks (zoo sits beside models, below this analysis' callers)
    from ..zoo.recipes.induction import make_batch

    model = zoo.load_zoo(args.model)
    hp = model.zoo_run.config()["hparams"]
    train, held, ref = (make_batch(args.n, hp, torch.Generator().manual_seed(s))
                        for s in (TRAIN_SEED, HELD_OUT_SEED, REFERENCE_SEED))
    print(f"fitting on {args.n} training sequences (seed {TRAIN_SEED}); measuring on {args.n} held-out sequences "
          f"(seed {HELD_OUT_SEED}), ablations from {args.n} reference sequences (seed {REFERENCE_SEED})",
          file=sys.stderr)
    findings = _findings(model, hp)
    for line in findings["lines"]:
        print(line)
    parts = induction_parts(model, train, layer0=args.layer0)
    out = table(model, parts, held, ref, n_boot=args.n_boot)
    out["findings"] = {k: v for k, v in findings.items() if k != "lines"}
    other = "offset" if args.layer0 == "positional" else "positional"
    variants = {f"layer0_{other}": (f"layer-0 patterns: {other}", dict(layer0=other)),
                "all_match_features": ("layer-1 rules with first/self/previous", dict(features=MATCH_FEATURES)),
                "constant_position": ("+ position embedding as its mean", dict(constant_position=True)),
                "copy_token": ("layer-1 values: the attended token alone", dict(copy_token=True)),
                "one_token_match": ("layer-1 rules: one-token match only", dict(features=("match_current",))),
                "induction_offset_by_one": ("layer-1 rules offset by one (wrong)", dict(induction_offset=1))}
    out["variants"] = {}
    for key, (label, kw) in variants.items():
        print(f"variant: {label}", file=sys.stderr)
        kw = {"layer0": args.layer0, **kw}
        out["variants"][key] = {"label": label, **_score_dict(measure_jointly(
            model, induction_parts(model, train, **kw), held, ref, n_boot=args.n_boot))}
    if args.json:
        print(json.dumps(out, indent=1, default=str))
    print("alone: only this part replaced; dL: its loss minus the clean loss, and the mean ablation's (nats);\n"
          "all but this: every other part replaced")
    print(f"{'part':8s} {'lines':>5s} {'fit':>4s}  {'alone vs mean':>26s}  {'alone vs resample':>26s}  "
          f"{'dL code / mean':>15s}  {'all but this vs mean':>26s}  rule")
    for r in out["rows"]:
        a = r["alone"]
        dl = "" if a is None else (f"{a['loss_code'] - a['loss_clean']:+.3f} / "
                                   f"{a['loss_mean_ablated'] - a['loss_clean']:+.3f}")
        print(f"{r['name']:8s} {r['lines']:5d} {r['fitted']:4d}  {_fmt(a, 'vs_mean'):>26s}  "
              f"{_fmt(a, 'vs_resample'):>26s}  {dl:>15s}  {_fmt(r['all_but_this'], 'vs_mean'):>26s}  {r['rule']}")
    j = out["joint"]
    fitted = sum(r["fitted"] for r in out["rows"])
    print(f"ALL      jointly: loss clean {j['loss_clean']:.4f}, code {j['loss_code']:.4f}, mean-ablated "
          f"{j['loss_mean_ablated']:.4f}, resample-ablated {j['loss_resample_ablated']:.4f}; KL(network || code) "
          f"{j['kl_network_to_code']:.4f} nats per measured token")
    print(f"         recovered vs mean {_fmt(j, 'vs_mean')}, vs resample {_fmt(j, 'vs_resample')}; "
          f"{fitted} fitted numbers")
    for v in out["variants"].values():
        print(f"{v['label']:40s} vs mean {_fmt(v, 'vs_mean')}, vs resample {_fmt(v, 'vs_resample')}, "
              f"KL {v['kl_network_to_code']:.4f}")
    jm, jr = j["vs_mean"]["value"], j["vs_resample"]["value"]
    wrong = out["variants"]["induction_offset_by_one"]["vs_mean"]["value"]
    checks = {"joint_vs_mean": {"target": ">= 0.99", "got": jm, "pass": jm >= 0.99},
              "joint_vs_resample": {"target": ">= 0.99", "got": jr, "pass": jr >= 0.99},
              "wrong_rule_recovers_less": {"target": "offset-by-one layer-1 rules < joint - 0.1 (vs mean)",
                                           "got": wrong, "pass": wrong < jm - 0.1}}
    result = {"name": "induction-code", "kind": "replication",
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "platform": platform.platform()},
              "figures": {"joint_vs_mean": jm, "joint_vs_resample": jr, "joint_ci_mean": j["vs_mean"]["ci"],
                          "joint_ci_resample": j["vs_resample"]["ci"], "loss_clean": j["loss_clean"],
                          "loss_code": j["loss_code"], "kl_network_to_code": j["kl_network_to_code"],
                          "fitted_numbers": fitted, "wrong_rule_vs_mean": wrong,
                          **{f"{k}_vs_mean": v["vs_mean"]["value"] for k, v in out["variants"].items()}},
              "checks": checks, "pass": all(c["pass"] for c in checks.values())}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
