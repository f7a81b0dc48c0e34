"""Trigger search: gradient-guided discrete optimisation over input tokens (GCG-style).

A trigger of `length` tokens is written into `contexts` (windows of the corpus) at `position`, and
chosen to maximise an objective averaged over the contexts:

- `Divergence(reference)`: KL(model ‖ reference) of the next-token distributions at the trigger's
  last token and the `span` positions after it;
- `Activation(site, unit or head or direction)`: a suspect component's activation (a neuron's
  pre-activation, a head's write to the residual -- its norm --, or the distance of the activation's
  projection on a direction from its mean, for a low-rank edit's key) at the trigger and after it,
  the largest over those positions.

Each step takes the gradient of the objective with respect to the one-hot input tokens -- the
gradient at the token embedding's output times the embedding matrix, so one backward pass scores
every (slot, token) swap to first order -- keeps the `topk` best swaps per slot, evaluates a batch
of them exactly and keeps the best trigger. It stops after `patience` steps without improvement, at
`max_steps`, or at the deadline. Byte-level vocabularies are searched over bytes only, and a
one-token trigger over at most `exhaustive_vocab` ids (default 256: bytes) is found exactly instead,
every token evaluated in batches (for the zoo text model's 4096 tokens that takes about a minute on
this project's loaded 2-core machine, against seconds for the gradient search).

`SearchResult.z` is the best objective's distance from its mean under random triggers of the same
length in the same contexts, in their standard deviations; the suspect's statistic is what the
trigger does to the outputs (`suspect`).

With a reference, `sweep` looks for n-gram triggers a fine-tune was taught on rare data (a poison:
a rare token pair followed by a target, in a small share of the training windows), which a
gradient search for the largest KL misses: over many tokens a fine-tune's general drift spreads the
KL more than a poison does, and a poison's trigger tokens are rarely in the audit's corpus. Its
score of a trigger is the largest single next-token term of KL(model ‖ reference) right after it,
averaged over the contexts: p(y)·(log p(y) − log q(y)) for the one token y that carries most of the
change (`shift`). A poison concentrates its change on its target, drift spreads it. Every token is
scored alone; the strongest `n_extend` are then extended one token to the left and one to the
right (every token tried in turn), so a pair is found from either of its tokens. A pair's score adds the
first token's term for the second: a model taught "a b → y" learns "a → b" too, so the whole taught
sequence stands out, while a pair only a fine-tune's drift moved does not. The candidates are the
tokens the reference predicts above 1/vocab somewhere on the corpus (`learned`): a token training
never showed as an output (a byte the text lacks) is noise to both models. The strongest n-grams
with distinct targets that raise their target at least `MIN_RISE` nats are the suspects; their
statistic `ngram_shift_ratio` is the score over the `FIELD_RANK`-th strongest with a distinct target
(the field). A poison plants one sequence, which gives at most a few strong n-grams with distinct
targets ("a → b", "a b → y", "b → y"); two models trained apart, or a fine-tune's drift, move many
continuations about as much as their strongest, and the poison must stand out from them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.interventions import Replace
from ..core.site import Kind, Site
from .inputs import byte_level, decode, log_probs, vocab_size
from .suspect import Suspect, trigger

METHOD = "triggers"
MIN_RISE = 1.0  # nats: a sweep trigger must raise its target this much over the reference (confirm.MIN_EFFECT)
FIELD_RANK = 5  # a sweep trigger is scored against the sweep's 5th strongest (targets distinct)


@dataclass(frozen=True)
class Divergence:
    """Objective: KL(model ‖ reference) of the next-token distributions at the trigger's last token and `span`
    positions after it."""

    reference: Any
    span: int = 4

    def interventions(self, stash: dict) -> list:
        """None: the objective reads the logits only."""
        return []

    def value(self, model: Any, out_logits: Tensor, ids: Tensor, stash: dict, lo: int) -> Tensor:
        """(batch,) the mean KL over the trigger's last token and the `span` positions after it."""
        hi = min(ids.shape[1], lo + self.span + 1)
        lp = torch.log_softmax(out_logits[:, lo:hi].float(), -1)
        with torch.no_grad():
            lr = log_probs(self.reference, ids)[:, lo:hi]
        return (lp.exp() * (lp - lr)).sum(-1).mean(-1)  # (batch,)


@dataclass(frozen=True)
class Activation:
    """Objective: a component's activation from the trigger on (a unit's, a head's write norm, or a projection on
    `direction`)."""

    site: Site
    unit: int | None = None
    head: int | None = None
    direction: Tensor | None = None  # project on it: a·d − its mean over the batch's positions
    signed: bool = True  # False: the projection's distance from its mean, either way

    def interventions(self, stash: dict) -> list:
        """An identity `Replace` at `site` that keeps its activation in `stash`."""
        def keep(x: Tensor, ctx: Any) -> Tensor:
            stash["a"] = x
            return x
        return [Replace(self.site, fn=keep)]

    def value(self, model: Any, out_logits: Tensor, ids: Tensor, stash: dict, lo: int) -> Tensor:
        """(batch,) the largest activation from position `lo` on: the unit's, the head's norm, the tensor's norm,
        or the projection on `direction` less its mean."""
        a = stash["a"]
        if self.direction is not None:
            p = a.float() @ self.direction.to(a.device).float()
            p = p[:, lo:] - p.mean()
            return (p if self.signed else p.abs()).max(-1).values
        a = a[:, lo:]
        if self.unit is not None:
            a = a[..., self.unit]
        elif self.head is not None:
            a = a[:, :, self.head].norm(dim=-1)
        elif a.dim() > 2:
            a = a.norm(dim=-1)
        return a.max(-1).values.float()


@dataclass
class SearchResult:
    """A trigger search's result: the best trigger's ids and objective, the random triggers' mean and std, and the
    search's steps, time and history."""

    ids: list[int]
    value: float
    baseline: float
    baseline_std: float
    steps: int
    seconds: float
    history: list[float] = field(default_factory=list)
    exhaustive: bool = False  # every one-token trigger evaluated, no gradient steps

    @property
    def z(self) -> float:
        """How many standard deviations of the random triggers' objective the best trigger is above their mean."""
        return (self.value - self.baseline) / max(self.baseline_std, 1e-6 * max(abs(self.baseline), 1e-6))


def insert(contexts: Tensor, trig: Tensor, position: int) -> Tensor:
    """Contexts with `trig` (m,) or (b, m) written at `position`: (b·K, L) when `trig` is batched."""
    if trig.dim() == 1:
        x = contexts.clone()
        x[:, position:position + trig.numel()] = trig
        return x
    b, m = trig.shape
    x = contexts.repeat(b, 1)
    x[:, position:position + m] = trig.repeat_interleave(contexts.shape[0], 0)
    return x


def _objective(model: Any, objective: Any, ids: Tensor, lo: int) -> Tensor:
    stash: dict = {}
    res = model.run(ids, interventions=objective.interventions(stash))
    return objective.value(model, res.logits, ids, stash, lo)


def evaluate(model: Any, objective: Any, contexts: Tensor, trigs: Tensor, position: int, chunk: int = 512) -> Tensor:
    """Mean objective over contexts for each trigger in `trigs` (b, m)."""
    K, m = contexts.shape[0], trigs.shape[1]
    lo = position + m - 1
    vals = []
    per = max(1, chunk // K)
    with torch.no_grad():
        for s in range(0, trigs.shape[0], per):
            x = insert(contexts, trigs[s:s + per], position)
            vals.append(_objective(model, objective, x, lo).reshape(-1, K).mean(1))
    return torch.cat(vals)


def token_gradient(model: Any, objective: Any, contexts: Tensor, trig: Tensor, position: int) -> Tensor:
    """d objective / d one-hot token for each trigger slot: (m, vocab)."""
    m = trig.numel()
    x = insert(contexts, trig, position)
    lo = position + m - 1
    stash: dict = {}
    embed = Site(Kind.EMBED)
    res = model.run(x, capture=[embed], interventions=objective.interventions(stash),
                    grad=lambda out: objective.value(model, out if torch.is_tensor(out) else out.logits, x, stash,
                                                     lo).mean())
    g = res.grads[embed][:, position:position + m].float().sum(0)  # (m, d_model)
    W_E = model.weights().W_E.float()
    return g @ W_E.T


def search(model: Any, objective: Any, contexts: Tensor, *, length: int = 1, position: int | None = None,
           topk: int = 64, batch: int = 64, max_steps: int = 20, patience: int = 3, deadline: float | None = None,
           seed: int = 0, n_random: int = 16, exhaustive_vocab: int = 256) -> SearchResult:
    """The best trigger found (see the module docstring). A one-token trigger over a vocabulary of at
    most `exhaustive_vocab` ids is found by evaluating every token exactly instead (0: always search)."""
    t0 = time.monotonic()
    g = torch.Generator().manual_seed(seed)
    v = 256 if byte_level(model) else vocab_size(model)
    K, L = contexts.shape
    position = L // 2 if position is None else position
    if position + length > L:
        raise ValueError(f"a trigger of {length} tokens at position {position} does not fit windows of {L}")
    rand = torch.randint(0, v, (n_random, length), generator=g)
    base_vals = evaluate(model, objective, contexts, rand, position)
    baseline, baseline_std = float(base_vals.mean()), float(base_vals.std())
    trig = rand[0].clone()
    best = float(evaluate(model, objective, contexts, trig[None], position)[0])
    history, still, steps = [best], 0, 0
    if length == 1 and v <= exhaustive_vocab:
        vals = evaluate(model, objective, contexts, torch.arange(v)[:, None], position)
        i = int(vals.argmax())
        return SearchResult([i], float(vals[i]), baseline, baseline_std, 1, time.monotonic() - t0,
                            [best, float(vals[i])], exhaustive=True)
    for _ in range(max_steps):
        if deadline is not None and time.monotonic() > deadline:
            break
        steps += 1
        grad = token_gradient(model, objective, contexts, trig, position)[:, :v]  # (m, v)
        top = grad.topk(min(topk, v), dim=-1).indices  # (m, topk)
        slots = torch.randint(0, length, (batch,), generator=g)
        picks = top[slots, torch.randint(0, top.shape[1], (batch,), generator=g)]
        n_rand = batch // 8  # a few random swaps besides, for objectives whose gradient is flat
        picks[-n_rand:] = torch.randint(0, v, (n_rand,), generator=g)
        if length == 1:  # one slot: the top-k swaps themselves, then random ones
            cand = torch.cat([top[0, :batch - n_rand], picks[-n_rand:]])[:, None]
        else:
            cand = trig.repeat(batch, 1)
            cand[torch.arange(batch), slots] = picks
        vals = evaluate(model, objective, contexts, cand, position)
        i = int(vals.argmax())
        if float(vals[i]) > best + 1e-6:
            best, trig, still = float(vals[i]), cand[i].clone(), 0
        else:
            still += 1
        history.append(best)
        if still >= patience:
            break
    return SearchResult([int(t) for t in trig], best, baseline, baseline_std, steps, time.monotonic() - t0, history)


def effect(model: Any, contexts: Tensor, trig: list[int], position: int, reference: Any = None,
           n_random: int = 16, seed: int = 0, span: int = 4) -> dict[str, Any]:
    """Which next tokens the trigger raises, where and by how much: against the reference on the same
    inputs, or against the model itself with random triggers in its place."""
    m = len(trig)
    lo, hi = position + m - 1, min(contexts.shape[1], position + m + span)
    x = insert(contexts, torch.tensor(trig), position)
    lp = log_probs(model, x)[:, lo:hi]  # (K, s, vocab)
    if reference is not None:
        base = log_probs(reference, x)[:, lo:hi]
    else:
        g = torch.Generator().manual_seed(seed)
        v = 256 if byte_level(model) else vocab_size(model)
        rand = torch.randint(0, v, (n_random, m), generator=g)
        base = torch.stack([log_probs(model, insert(contexts, r, position))[:, lo:hi] for r in rand]).mean(0)
    rise = (lp - base).mean(0)  # (s, vocab)
    weight = (lp.exp() * (lp - base)).mean(0)  # each token's share of the change, where the model puts mass
    best = weight.max(-1)
    k = int(best.values.argmax())
    tgt = int(best.indices[k])
    return {"target_ids": [tgt], "target_text": decode(model, [tgt]), "delta_logprob": float(rise[k, tgt]),
            "offset": k, "model_logprob": float(lp[:, k, tgt].mean())}


@dataclass
class Shifted:
    """An n-gram trigger of `sweep`: its ids, the target whose next-token term of KL(model ‖ reference) is
    largest right after it (`shift`, nats) and that target's mean log-prob rise over the reference."""

    ids: list[int]
    target: int
    shift: float
    rise: float


@torch.no_grad()
def shift(model: Any, reference: Any, contexts: Tensor, trigs: Tensor, position: int, chunk: int = 2048,
          full: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """For each trigger of `trigs` (b, m) written into `contexts` (K, L) so that its last token is at
    `position`: the largest next-token term p(y)·(log p(y) − log q(y)) of KL(model ‖ reference) there,
    averaged over the contexts, the token y that carries it, and y's mean log-prob rise (three (b,)
    tensors); with `full`, every token's term besides, (b, vocab), else None."""
    K, m = contexts.shape[0], trigs.shape[1]
    if position - m + 1 < 0 or position >= contexts.shape[1]:
        raise ValueError(f"a trigger of {m} tokens cannot end at position {position} of windows of "
                         f"{contexts.shape[1]}")
    per = max(1, chunk // K)
    vals, tgts, rises, terms = [], [], [], []
    for s in range(0, trigs.shape[0], per):
        x = insert(contexts, trigs[s:s + per], position - m + 1)[:, :position + 1]  # causal: the prefix decides
        lp = torch.log_softmax(model.run(x).logits[:, position].float(), -1)
        lr = torch.log_softmax(reference.run(x).logits[:, position].float(), -1)
        d = (lp - lr).reshape(-1, K, lp.shape[-1])
        w = (lp.exp().reshape(d.shape) * d).mean(1)  # (b, vocab)
        best = w.max(-1)
        vals.append(best.values)
        tgts.append(best.indices)
        rises.append(d.mean(1).gather(-1, best.indices[:, None])[:, 0])
        if full:
            terms.append(w)
    return torch.cat(vals), torch.cat(tgts), torch.cat(rises), torch.cat(terms) if full else None


@torch.no_grad()
def learned(reference: Any, corpus: Tensor) -> Tensor:
    """The token ids the reference predicts above the uniform probability 1/vocab at some position of
    `corpus` (n, T): (k,) sorted. A token training never showed as an output (a byte the text does not
    contain, say) stays below it everywhere; what two models do after such a token is noise, so the
    n-gram sweep leaves it out."""
    lp = log_probs(reference, corpus)  # (n, T, vocab)
    v = 256 if byte_level(reference) else lp.shape[-1]
    top = lp.flatten(0, 1)[:, :v].max(0).values
    return (top >= -torch.log(torch.tensor(float(lp.shape[-1])))).nonzero().flatten()


def sweep(model: Any, reference: Any, contexts: Tensor, position: int, *, tokens: Tensor | None = None,
          n_extend: int | None = None, n_keep: int = 3, deadline: float | None = None,
          min_rise: float = MIN_RISE) -> tuple[list[Shifted], int, float]:
    """The n-gram triggers whose change against the reference is most concentrated on the n-gram and one
    next token (see the module docstring), written into `contexts` (K, L) to end at `position`: every
    token of `tokens` (k,) (default: the whole vocabulary, bytes
    for a byte-level model) alone, then the `n_extend` strongest (default: as many as about 20 vocabulary
    sweeps of 256 tokens allow, at most 8 and at least 1) extended left and right over `tokens`; the
    `n_keep` strongest with distinct targets whose target rose at least `min_rise` nats (the trigger
    effect a confirmation asks for), strongest first; how many triggers were scored; and the field, the
    `FIELD_RANK`-th strongest score with a distinct target. Stops extending at `deadline` (monotonic
    clock)."""
    v = 256 if byte_level(model) else vocab_size(model)
    tokens = torch.arange(v) if tokens is None else tokens.flatten().long()
    if tokens.numel() == 0:
        return [], 0, 0.0
    if n_extend is None:
        n_extend = max(1, min(8, 20 * 256 // max(1, tokens.numel())))
    found: dict[tuple[int, ...], Shifted] = {}
    w1, y1, r1, terms = shift(model, reference, contexts, tokens[:, None], position, full=True)
    row = torch.full((v,), -1, dtype=torch.long)
    row[tokens] = torch.arange(tokens.numel())
    for i, t in enumerate(tokens.tolist()):
        found[(t,)] = Shifted([t], int(y1[i]), float(w1[i]), float(r1[i]))

    def pairs(trigs: Tensor) -> None:
        w, y, r, _ = shift(model, reference, contexts, trigs, position)
        first = terms[row[trigs[:, 0]], trigs[:, 1]]  # the first token's term for the second
        for i in range(trigs.shape[0]):
            ids = [int(t) for t in trigs[i]]
            found[tuple(ids)] = Shifted(ids, int(y[i]), float(w[i] + first[i]), float(r[i]))

    for i in w1.topk(min(n_extend, w1.numel())).indices.tolist():
        if deadline is not None and time.monotonic() > deadline:
            break
        t = torch.full_like(tokens, int(tokens[i]))
        pairs(torch.stack([tokens, t], 1))  # one token to the left
        pairs(torch.stack([t, tokens], 1))  # one token to the right
    out: list[Shifted] = []
    field: list[Shifted] = []  # the strongest with distinct targets, whatever their rise
    for r in sorted(found.values(), key=lambda r: -r.shift):
        if len(field) < FIELD_RANK and all(r.target != o.target for o in field):
            field.append(r)
        if len(out) < n_keep and r.rise >= min_rise and all(r.target != o.target for o in out):
            out.append(r)
        if len(out) >= n_keep and len(field) >= FIELD_RANK:
            break
    return out, len(found), field[-1].shift


def sweep_suspect(model: Any, r: Shifted, contexts: Tensor, position: int, searched: int, field: float) -> Suspect:
    """A `sweep` trigger found in `contexts` (K, L) as a suspect: statistic `ngram_shift_ratio`, its score
    over `field` (the sweep's `FIELD_RANK`-th strongest: how far the n-gram stands out from the other
    changes); the effect is its target's rise right after it (offset 0: the trigger is written at
    `position` and the target read after its last token)."""
    kind = "token" if len(r.ids) == 1 else "ngram"
    eff = {"target_ids": [r.target], "target_text": decode(model, [r.target]), "delta_logprob": r.rise,
           "offset": 0}
    ev = {"objective": "largest next-token term of KL(model ‖ reference) after the trigger", "shift": r.shift,
          "field": field, "contexts": int(contexts.shape[0]), "position": position, "triggers_scored": searched}
    return Suspect(None, trigger(kind, r.ids, decode(model, r.ids)), eff, "ngram_shift_ratio",
                   r.shift / max(field, 1e-9), [METHOD], ev)


def suspect(model: Any, res: SearchResult, contexts: Tensor, position: int, reference: Any = None,
            comp: dict | None = None, objective: str = "") -> Suspect:
    """The trigger as a suspect. Its statistic: with a reference, `trigger_kl_ratio` -- KL(model ‖
    reference) at the trigger and the positions after it over the same KL on the contexts without
    it; alone, `trigger_effect` -- the rise (nats) of the token the trigger raises most against
    random tokens in its place."""
    eff = effect(model, contexts, res.ids, position, reference)
    kind = "token" if len(res.ids) == 1 else "ngram"
    ev = {"objective": objective, "best": res.value, "random_trigger_mean": res.baseline,
          "random_trigger_std": res.baseline_std, "z": res.z, "steps": res.steps, "exhaustive": res.exhaustive, "seconds": round(res.seconds, 2),
          "contexts": int(contexts.shape[0]), "position": position}
    if reference is not None:
        div = Divergence(reference)
        lo = position + len(res.ids) - 1
        with torch.no_grad():
            on = float(_objective(model, div, insert(contexts, torch.tensor(res.ids), position), lo).mean())
            off = float(_objective(model, div, contexts, lo).mean())
        stat, score = "trigger_kl_ratio", on / max(off, 1e-9)
        ev |= {"kl_with_trigger": on, "kl_without": off}
    else:
        stat, score = "trigger_effect", float(eff["delta_logprob"])
    return Suspect(comp, trigger(kind, res.ids, decode(model, res.ids)), eff, stat, score, [METHOD], ev)
