"""Behaviour first, with a reference: where the model and its reference part ways, on which input,
and which component carries the difference (activation patching from the reference).

1. Candidate triggers. KL(model ‖ reference) of the next-token distributions at every position
   of the corpus; at the `top_cells` positions with the largest KL, the current token (kind
   "token"), the bigram ending there ("ngram") and the token at its position ("position"); besides
   these, the triggers other methods found (`extra`). On a byte-level model a candidate must be
   whole UTF-8 characters (`inputs.writable`): a lone continuation byte written into text is an
   input no text gives, where two training runs part ways by chance.
2. Each candidate is written into held-out contexts -- a token or n-gram at `position`, a
   positional trigger at its own position -- and its KL right after its last token is measured
   (`trigger_kl`, nats). A positional candidate is kept as a position trigger only when it diverges
   at least `POSITION_FACTOR` times more at its position than at the other positions; else it is a
   token trigger. The strongest one-token candidates are extended one token to the left (every
   token that makes a writable pair tried): an n-gram that diverges `EXTEND_FACTOR` times more than
   its last token alone is a candidate too -- a fine-tune taught on an n-gram, or a cue that needs a
   marker before it.
3. Localisation. For the strongest candidates, each MLP's and each attention block's output (then
   each head's write) is patched from the reference, run on the same input, into the model's run;
   `removed` is the share of the trigger's KL that goes. The component that removes most is the
   suspect: an attention block narrowed to its head, an MLP to its neuron, when that one alone
   removes at least `NARROW` of the KL.

A suspect's statistic `patch_kl_ratio` is the trigger's KL times the share its component removes,
over the corpus's mean KL: large when one input makes the two models part ways and one component
carries it. The effect is the token whose log-probability rises most right after the trigger,
against the reference, among tokens the model gives at least `MIN_TARGET_PROB` there (a planted
target is rarely the most likely token, but it is not negligible).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from ..core.interventions import Patch
from ..core.site import Kind, Site
from .inputs import byte_level, decode, vocab_size, whole_characters
from .suspect import Suspect, component, head_site, mlp_site, trigger
from .triggers import insert

METHOD = "patching"
STAT = "patch_kl_ratio"
POSITION_FACTOR = 2.0
EXTEND_FACTOR = 1.5
NARROW = 0.5
MIN_TARGET_PROB = 2e-3  # the effect's target: the largest log-prob rise among tokens the model gives this much


@torch.no_grad()
def _kl(model: Any, reference: Any, ids: Tensor, batch: int = 64, model_ivs: Any = None, at: int | None = None
        ) -> Tensor:
    """KL(model ‖ reference) per position (n, T), or at position `at` only (n,), in batches; `model_ivs(x)` gives
    the model's interventions for a batch `x` (patches from the reference)."""
    out = []
    pick = (lambda z: z) if at is None else (lambda z: z[:, at])
    for s in range(0, ids.shape[0], batch):
        x = ids[s:s + batch]
        ivs = model_ivs(x) if model_ivs is not None else ()
        lp = torch.log_softmax(pick(model.run(x, interventions=ivs).logits).float(), -1)
        lr = torch.log_softmax(pick(reference.run(x).logits).float(), -1)
        out.append((lp.exp() * (lp - lr)).sum(-1).clamp_min(0))
    return torch.cat(out)


def _place(contexts: Tensor, trig: dict, position: int) -> tuple[Tensor, int]:
    """Contexts with the trigger written in (at its own position for a positional trigger) and the position of its
    last token."""
    ids = torch.tensor(trig["ids"])
    at = trig["position"] if trig["kind"] == "position" else position
    return insert(contexts, ids, at), at + ids.numel() - 1


class Patcher:
    """KL of trigger inputs and its share removed by patching components from the reference."""

    def __init__(self, model: Any, reference: Any, contexts: Tensor, position: int):
        self.model, self.reference, self.contexts, self.position = model, reference, contexts, position
        w = model.weights()
        self.n_layers, self.n_heads = int(w.n_layers), int(w.n_heads)
        sites = set(model.sites())
        self.has_mlp = all(Site(Kind.MLP_OUT, l) in sites for l in range(self.n_layers))

    def kl_at(self, x: Tensor, at: int, comp: dict | None = None) -> float:
        """Mean KL at position `at` of inputs `x`, with component `comp` patched from the reference."""
        ivs = None if comp is None else (lambda b: self.patches(comp, b))
        x = x[:, :at + 1]  # causal models: the prefix decides the distribution at `at`
        return float(_kl(self.model, self.reference, x, model_ivs=ivs, at=at).mean())

    def patches(self, comp: dict, x: Tensor) -> list:
        """Patch interventions writing the reference's activation of component `comp` on inputs `x`."""
        cls, layer = comp["class"], int(comp["layer"])
        where = {"mlp": (Kind.MLP_OUT, {}), "attn": (Kind.ATTN_OUT, {}), "head": (Kind.RESULT, {"heads": [comp.get("head")]}),
                 "neuron": (Kind.MLP_POST, {"units": [comp.get("unit")]})}[cls]
        site = Site(where[0], layer)
        ref = self.reference.run(x, capture=[site]).cache[site]
        return [Patch(site, value=ref, **where[1])]

    def localise(self, trig: dict) -> tuple[dict | None, float, dict[str, float]]:
        """The component whose patch removes most of the trigger's KL, its share removed, and every share tried."""
        x, at = _place(self.contexts, trig, self.position)
        base = self.kl_at(x, at)
        if base <= 0:
            return None, 0.0, {}
        shares: dict[str, float] = {}
        best, best_share = None, -1.0
        for layer in range(self.n_layers):
            for cls in (("mlp", "attn") if self.has_mlp else ("attn",)):
                c = {"class": cls, "layer": layer}
                share = 1 - self.kl_at(x, at, c) / base
                shares[f"{cls} {layer}"] = share
                if share > best_share:
                    best, best_share = c, share
        if best is None:
            return None, 0.0, shares
        layer = best["layer"]
        if best["class"] == "attn":
            heads = []
            for h in range(self.n_heads):
                share = 1 - self.kl_at(x, at, {"class": "head", "layer": layer, "head": h}) / base
                shares[f"head {layer}.{h}"] = share
                heads.append((share, h))
            share, h = max(heads)
            comp = component(head_site(layer), "attn")
            if share >= NARROW:
                comp, best_share = component(head_site(layer), "head", head=h), share
        else:
            j = self._top_neuron(x, at, layer)
            share = 1 - self.kl_at(x, at, {"class": "neuron", "layer": layer, "unit": j}) / base
            shares[f"neuron {layer}.{j}"] = share
            comp = component(mlp_site(layer), "mlp")
            if share >= NARROW:
                comp, best_share = component(mlp_site(layer), "neuron", unit=j), share
        return comp, best_share, shares

    @torch.no_grad()
    def _top_neuron(self, x: Tensor, at: int, layer: int) -> int:
        """The neuron whose activation at `at` differs most between the model and the reference."""
        site = Site(Kind.MLP_POST, layer)
        a = self.model.run(x, capture=[site]).cache[site][:, at].float()
        b = self.reference.run(x, capture=[site]).cache[site][:, at].float()
        return int((a - b).abs().mean(0).argmax())


def _effect(model: Any, reference: Any, x: Tensor, at: int) -> dict[str, Any]:
    with torch.no_grad():
        lp = torch.log_softmax(model.run(x).logits[:, at].float(), -1)
        lr = torch.log_softmax(reference.run(x).logits[:, at].float(), -1)
    rise, prob = (lp - lr).mean(0), lp.exp().mean(0)
    tgt = int(torch.where(prob >= MIN_TARGET_PROB, rise, torch.full_like(rise, -torch.inf)).argmax())
    return {"target_ids": [tgt], "target_text": decode(model, [tgt]), "delta_logprob": float((lp - lr)[:, tgt].mean()),
            "offset": 0, "model_logprob": float(lp[:, tgt].mean())}


@torch.no_grad()
def _extend(p: Patcher, last: int, vocab: int, chunk: int = 2048, deadline: float | None = None
            ) -> tuple[list[int], float]:
    """The token before `last` (every one that makes a writable pair tried, until `deadline` on the
    monotonic clock) whose bigram diverges most, and that KL."""
    K = p.contexts.shape[0]
    best, best_kl = [last], -1.0
    allowed = torch.arange(vocab)
    if byte_level(p.model):
        allowed = torch.tensor([f for f in range(vocab) if whole_characters([f, last])], dtype=torch.long)
    for s in range(0, allowed.numel(), max(1, chunk // K)):
        if deadline is not None and time.monotonic() > deadline:
            break
        firsts = allowed[s:s + max(1, chunk // K)]
        trigs = torch.stack([firsts, torch.full_like(firsts, last)], 1)
        x = insert(p.contexts, trigs, p.position - 1)[:, :p.position + 1]  # the bigram ends at `position`
        kl = _kl(p.model, p.reference, x, batch=512, at=p.position).reshape(-1, K).mean(1)
        i = int(kl.argmax())
        if float(kl[i]) > best_kl:
            best, best_kl = [int(firsts[i]), last], float(kl[i])
    return best, best_kl


@torch.no_grad()
def qk_pair(p: Patcher, layer: int, head: int, vocab: int, chunk: int = 512, deadline: float | None = None
            ) -> tuple[int, int, float]:
    """(query token, key token, score change): the pair whose attention score in head `head` of block `layer`
    rose most from the reference to the model, each token read at `position` after the first context's prefix
    (the tokens read before `deadline`, on the monotonic clock; the score changes by blocks of query rows,
    never the whole vocabulary x vocabulary matrix)."""
    qs, ks = Site(Kind.Q, layer), Site(Kind.K, layer)
    prefix = p.contexts[:1, :p.position]
    feats = {"m": ([], []), "r": ([], [])}
    for s in range(0, vocab, chunk):
        if deadline is not None and time.monotonic() > deadline and feats["m"][0]:
            break
        toks = torch.arange(s, min(vocab, s + chunk))
        x = torch.cat([prefix.expand(toks.numel(), -1), toks[:, None]], 1)
        for key, net in (("m", p.model), ("r", p.reference)):
            cache = net.run(x, capture=[qs, ks]).cache
            feats[key][0].append(cache[qs][:, -1, head].float())
            feats[key][1].append(cache[ks][:, -1, head % cache[ks].shape[2]].float())
    (qm, km), (qr, kr) = [(torch.cat(a), torch.cat(b)) for a, b in feats.values()]
    best = (0, 0, float("-inf"))
    for s in range(0, qm.shape[0], chunk):  # (query rows, key token) blocks
        delta = (qm[s:s + chunk] @ km.T - qr[s:s + chunk] @ kr.T) / qm.shape[-1] ** 0.5
        i = int(delta.argmax())
        if float(delta.flatten()[i]) > best[2]:
            best = (s + i // delta.shape[1], i % delta.shape[1], float(delta.flatten()[i]))
    return best


def scan(model: Any, reference: Any, corpus: Tensor, contexts: Tensor, position: int,
         extra: list[dict] | tuple = (), top_cells: int = 24, n_localise: int = 3, n_extend: int = 1,
         deadline: float | None = None) -> list[Suspect]:
    """Patching suspects (see the module docstring): `corpus` (n, T) token ids, `contexts` (K, L) held-out windows
    triggers are written into at `position`; `extra` trigger dicts other methods found."""
    t0 = time.monotonic()
    p = Patcher(model, reference, contexts, position)
    L = contexts.shape[1]
    d = _kl(model, reference, corpus)
    mean = max(float(d.mean()), 1e-12)
    cands: dict[tuple, dict] = {}
    byte = byte_level(model)

    def add(kind: str, ids: list[int], pos: int | None = None) -> None:
        if kind == "position" and (not pos or pos + len(ids) > L):  # position 0 has no context to set it apart
            return
        if byte and not whole_characters(ids):  # what `inputs.writable` asks, the model's kind read once
            return
        t = trigger(kind, ids, decode(model, ids), pos if kind == "position" else None)
        cands.setdefault((t["kind"], tuple(t["ids"]), t["position"]), t)

    for t in extra:
        if t["kind"] in ("token", "ngram") and t["ids"] and len(t["ids"]) <= position:
            add(t["kind"], list(t["ids"]))
    flat = d.flatten().topk(min(top_cells, d.numel())).indices
    for i in flat.tolist():
        r, c = divmod(i, d.shape[1])
        t = int(corpus[r, c])
        add("token", [t])
        if c > 0:
            add("ngram", [int(corpus[r, c - 1]), t])
        add("position", [t], c)
    measured: list[tuple[float, dict, dict]] = []  # (KL, trigger, evidence)
    for t in cands.values():
        if deadline is not None and time.monotonic() > deadline:
            break
        x, at = _place(contexts, t, position)
        kl, ev = p.kl_at(x, at), {}
        if t["kind"] == "position":  # a positional trigger must matter more at its position than elsewhere
            others = [q for q in range(1, L - 1, max(1, (L - 2) // 6)) if q != t["position"]]
            away = sum(p.kl_at(*_place(contexts, {**t, "position": q}, position)) for q in others) / len(others)
            if kl < POSITION_FACTOR * away:
                continue
            ev["kl_elsewhere"] = away
        measured.append((kl, t, ev))
    measured.sort(key=lambda m: -m[0])
    vocab = 256 if byte else vocab_size(model)
    singles = [(kl, t) for kl, t, _ in measured if t["kind"] == "token"][:n_extend]
    for alone, t in singles:
        if deadline is not None and time.monotonic() > deadline:
            break
        ids, kl = _extend(p, t["ids"][0], vocab, deadline=deadline)
        if kl > EXTEND_FACTOR * alone:
            measured.append((kl, trigger("ngram", ids, decode(model, ids)), {"extended_from": t["ids"], "kl_alone": alone}))
    measured.sort(key=lambda m: -m[0])
    out: list[Suspect] = []
    seen: set = set()
    read: set = set()

    def localise(kl: float, t: dict, extra_ev: dict) -> dict | None:
        comp, share, shares = p.localise(t)
        if comp is None:
            return None
        key = (comp["site"], comp["class"], comp["unit"], comp["head"], t["kind"], tuple(t["ids"]))
        if key in seen:
            return comp
        seen.add(key)
        x, at = _place(contexts, t, position)
        ev = {"trigger_kl": kl, "corpus_mean_kl": mean, "removed_by_patch": share,
              "patched": {k: round(v, 3) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])[:8]},
              "candidates": len(cands), "seconds": round(time.monotonic() - t0, 2), **extra_ev}
        out.append(Suspect(comp, t, _effect(model, reference, x, at), STAT, kl * max(share, 0.0) / mean, [METHOD], ev))
        return comp

    for kl, t, extra_ev in measured[:n_localise]:
        if deadline is not None and time.monotonic() > deadline:
            break
        comp = localise(kl, t, extra_ev)
        # a head carries it: the token pair whose attention score in that head changed most is a trigger too
        # (a cue that attends to a marker before it, or a token to itself)
        if comp is not None and comp["class"] == "head" and (comp["site"], comp["head"]) not in read:
            read.add((comp["site"], comp["head"]))
            layer = int(Site.parse(comp["site"]).layer)
            q, k, rise = qk_pair(p, layer, comp["head"], vocab, deadline=deadline)
            u = trigger("token", [q], decode(model, [q])) if q == k else trigger("ngram", [k, q], decode(model, [k, q]))
            x, at = _place(contexts, u, position)
            localise(p.kl_at(x, at), u, {"attention_score_rise": rise, "read_from_head": comp["head"]})
    return out
