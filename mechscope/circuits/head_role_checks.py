"""Copy suppression, and a causal check for each head role.

`head_roles` says where heads look; this file adds the role that needs the output side too, and
checks roles by removing heads.

Copy suppression (negative copying), three scores per head (`copy_suppression_scores`):
    ov_eigen     sum(re lambda) / sum(|lambda|) over the eigenvalues of W_E W_V W_O W_U
                 (`copying_scores`); near -1 for a head that lowers the logits of what it attends to
    ov_diag      the full OV circuit's diagonal against its rows: for each token t, (row_t[t] -
                 mean(row_t)) / std(row_t), averaged over tokens (up to `max_tokens` sampled); negative
                 when attending to t lowers t's logit relative to the others
    suppression  from a run on repeated random tokens: at each query q, t* is the model's predicted
                 token; a_q is the head's attention to earlier positions holding t*; d_q is the head's
                 direct effect on t*'s logit relative to the mean logit (through the final norm with
                 its scale frozen from the run). suppression = -sum a_q d_q / sum a_q |d_q| in [-1, 1]:
                 +1 when attending to earlier copies of the predicted token always lowers its logit
                 (copy suppression); -1 when it always raises it (an induction / copying head)
A copy-suppression head has negative ov scores and a positive suppression score.

`causal_check(model, role, heads)` mean-ablates the named heads (their attn.z at every position,
replaced by the per-position mean over a reference probe of repeated random tokens drawn with
another seed) and measures the behaviour the role names, per prompt, with a bootstrap interval:
    induction         loss on the second copy of repeated random tokens: expected to rise
    previous_token    prefix-matching (induction) score of the downstream induction heads (the
                      later-layer heads scoring > 0.3 in the clean probe, else the best one): expected to fall
    duplicate_token   duplicate-token attention of downstream heads is not what they are for; the
                      behaviour measured is the same as for previous_token (prefix matching of
                      downstream induction heads), expected to fall, and says so in `metric`
    bos               KL(clean || ablated) of next-token distributions over all positions: a resting
                      head (attention parked on the first token) is expected to change little (< 0.1 nats)
    copy_suppression  logit of the predicted token (minus the mean logit) at queries where that token
                      occurred earlier: expected to rise when the suppressing heads are removed
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.interventions import Intervention, Mean
from ..core.run import run
from ..core.score import Score
from ..core.site import Kind, Site
from ..models import wrap
from .composition import copying_scores
from .direct_logit_attribution import _frozen_scale, _post_norm
from .head_roles import HeadRoles, head_roles, repeated_tokens

ROLES = ("induction", "previous_token", "duplicate_token", "bos", "copy_suppression")


@dataclass(frozen=True)
class CopySuppression:
    """(layer, head) scores; see the module docstring.

    Example::

        from mechscope.circuits import copy_suppression_scores
        cs = copy_suppression_scores(model)
        cs.suppression                           # (layer, head)
        cs.heads(suppression=0.3)                # [(layer, head), ...] above the threshold
    """

    ov_eigen: Tensor
    ov_diag: Tensor
    suppression: Tensor
    n: int
    batch: int
    seed: int

    def heads(self, suppression: float = 0.3) -> list[tuple[int, int]]:
        """Heads with negative OV scores (both) and suppression above the threshold."""
        ok = (self.ov_eigen < 0) & (self.ov_diag < 0) & (self.suppression > suppression)
        return [(int(l), int(h)) for l, h in ok.nonzero()]


def ov_diagonal_scores(model: Any, fold_ln: bool = True, max_tokens: int = 512, seed: int = 0) -> Tensor:
    """(layer, head) mean z-scored diagonal of the full OV circuit W_E W_V W_O W_U (module docstring)."""
    w = wrap(model).weights(fold_ln=fold_ln)
    V = w.W_E.shape[0]
    g = torch.Generator().manual_seed(seed)
    toks = torch.arange(V) if V <= max_tokens else torch.randperm(V, generator=g)[:max_tokens]
    E = w.W_E[toks].double()
    E = E - E.mean(-1, keepdim=True)  # every norm the values pass through centres or rescales rows
    if w.W_U.shape[1] != V:  # output vocabulary differs: only the shared tokens have a diagonal
        keep = toks < w.W_U.shape[1]
        toks, E = toks[keep], E[keep]
    U = w.W_U.double()  # (d_model, vocab)
    Vu = U.shape[1]
    # each row r = a @ U (a = e W_V W_O) needs only its diagonal entry, its mean and its spread over
    # the vocabulary: mean = a . u_bar and sum(r^2) = a G a^T with G = U U^T, so no (tokens, vocab)
    # block is built (SmolLM2: 270 heads x 512 x 49k would be ~8 TFLOP in float64)
    u_bar, G = U.mean(1), U @ U.T
    U_t = U[:, toks].T  # (tokens, d_model): each token's own unembedding column
    out = torch.empty(w.n_layers, w.n_heads)
    for l in range(w.n_layers):
        a = torch.einsum("td,hde,hem->htm", E, w.W_V[l].double(), w.W_O_written[l].double())  # (head, tokens, d_model)
        diag = (a * U_t).sum(-1)
        mean = a @ u_bar
        sq = torch.einsum("htd,de,hte->ht", a, G, a)
        std = ((sq - Vu * mean**2) / (Vu - 1)).clamp_min(0).sqrt()  # unbiased, as Tensor.std
        out[l] = ((diag - mean) / std.clamp_min(1e-12)).mean(-1)
    return out


def _final_norm(model, res, L: int) -> tuple[Tensor, bool]:
    """The final norm's frozen scale (batch, pos, 1) and whether it centres; (1, False) without one."""
    w = model.weights()
    if Site(Kind.LN_FINAL) not in set(model.sites()) or w.lnf_w is None:
        return torch.ones(()), False
    x, y = res.cache[Site(Kind.RESID_POST, L - 1)].double(), res.cache[Site(Kind.LN_FINAL)].double()
    return _frozen_scale(x, y, w.lnf_w.double(), None if w.lnf_b is None else w.lnf_b.double())


@torch.no_grad()
def _direct_on_predicted(model, ids: Tensor, interventions: Sequence[Intervention] = ()) -> dict[str, Tensor]:
    """Patterns, each head's direct effect on the predicted token's (centred) logit, and the predictions."""
    L = model.n_layers
    valid = set(model.sites())
    w = model.weights()
    sites = [Site(Kind.PATTERN, l) for l in range(L)] + [Site(Kind.RESULT, l) for l in range(L)] \
        + [Site(Kind.RESID_POST, L - 1)] + ([Site(Kind.LN_FINAL)] if Site(Kind.LN_FINAL) in valid else []) \
        + ([Site(Kind.ATTN_OUT, l) for l in range(L)] if w.ln1_post_w is not None else [])
    res = run(model, ids, capture=sites, interventions=interventions)
    pred = res.logits.argmax(-1)  # (batch, pos)
    U = w.W_U.double()
    if w.lnf_w is not None:
        U = U * w.lnf_w.double()[:, None]
    u = U[:, pred] - U.mean(-1)[:, None, None]  # (d_model, batch, pos): t* minus the mean logit direction
    scale, centred = _final_norm(model, res, L)
    out = []
    for l in range(L):
        r = res.cache[Site(Kind.RESULT, l)].double()  # (batch, pos, head, d_model)
        if w.ln1_post_w is not None:  # each head's share of the post-attention norm's output, its scale frozen
            heads = r.movedim(2, 0)
            total = heads.sum(0) + (0 if w.b_O is None else w.b_O[l].double())
            r = _post_norm(total, res.cache[Site(Kind.ATTN_OUT, l)].double(), w.ln1_post_w[l].double())(heads)
            r = r.movedim(0, 2)
        if centred:
            r = r - r.mean(-1, keepdim=True)
        r = r / (scale.unsqueeze(-1) if scale.dim() else scale)
        out.append(torch.einsum("bphd,dbp->bph", r, u))
    pats = torch.stack([res.cache[Site(Kind.PATTERN, l)] for l in range(L)])  # (layer, batch, head, q, k)
    return {"pred": pred, "dla": torch.stack(out), "pattern": pats, "logits": res.logits}  # dla (layer, b, p, h)


@torch.no_grad()
def copy_suppression_scores(model: Any, n: int = 20, batch: int = 16, seed: int = 0, bos: int | None = None,
                            vocab: int | None = None, fold_ln: bool = True) -> CopySuppression:
    """OV eigenvalue and diagonal scores and the attention-based suppression score of every head.

    Example::

        from mechscope.circuits import copy_suppression_scores
        cs = copy_suppression_scores(ms.load("smollm2-135m"), n=10, batch=8)
        cs.heads()
    """
    model = wrap(model)
    vocab = int(model.weights().W_E.shape[0]) if vocab is None else vocab
    ids = repeated_tokens(vocab, n, batch, seed, bos)
    got = _direct_on_predicted(model, ids)
    pred, dla, pat = got["pred"], got["dla"], got["pattern"]
    copies = (ids[:, None, :] == pred[:, :, None]) & torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril(-1)
    a = (pat.double() * copies[None, :, None].double()).sum(-1)  # (layer, batch, head, q)
    d = dla.permute(0, 1, 3, 2)  # (layer, batch, head, q)
    num = -(a * d).sum((1, 3))
    den = (a * d.abs()).sum((1, 3)).clamp_min(1e-12)
    return CopySuppression(ov_eigen=copying_scores(model, fold_ln=fold_ln).detach(),
                           ov_diag=ov_diagonal_scores(model, fold_ln=fold_ln, seed=seed),
                           suppression=(num / den).float(), n=n, batch=batch, seed=seed)


@dataclass(frozen=True)
class RoleCheck:
    """A role's behaviour with and without its heads. `effect` is per prompt (ablated - clean).

    Example::

        from mechscope.circuits import causal_check
        check = causal_check(model, "induction", [(1, 1), (1, 3)], n=12)
        check.clean, check.ablated, check.effect             # effect: Score of the per-prompt change
        check.passed
    """

    role: str
    heads: tuple[tuple[int, int], ...]
    metric: str
    clean: float
    ablated: float
    effect: Score
    expect: str  # "increase", "decrease" or "small"
    passed: bool

    def __str__(self) -> str:
        hs = ", ".join(f"L{l}H{h}" for l, h in self.heads)
        return (f"{self.role} [{hs}]: {self.metric} {self.clean:.4g} -> {self.ablated:.4g} when mean-ablated "
                f"(expected: {self.expect}; {'pass' if self.passed else 'FAIL'})\n  {self.effect}")


def _mean_ablation(model, heads: Sequence[tuple[int, int]], ref_ids: Tensor) -> list[Intervention]:
    by_layer: dict[int, list[int]] = defaultdict(list)
    for l, h in heads:
        by_layer[int(l)].append(int(h))
    sites = [Site(Kind.Z, l) for l in sorted(by_layer)]
    ref = run(model, ref_ids, capture=sites)
    return [Mean.of(s, ref.cache[s], heads=by_layer[s.layer]) for s in sites]


def _repeat_loss(logits: Tensor, ids: Tensor, n: int, off: int) -> Tensor:
    """(batch,) loss on the second copy: logits at off+n .. off+2n-2 predict tokens off+n+1 .. off+2n-1."""
    q = torch.arange(off + n, off + 2 * n - 1)
    ce = F.cross_entropy(logits[:, q].double().flatten(0, 1), ids[:, q + 1].flatten(), reduction="none")
    return ce.view(ids.shape[0], -1).mean(1)


def _prefix_matching(pattern: Tensor, n: int, off: int) -> Tensor:
    """(batch,) attention to q - n + 1 from second-copy queries, pattern (batch, q, k) of one head."""
    q = torch.arange(off + n, off + 2 * n)
    return pattern[:, q, q - n + 1].mean(-1)


@torch.no_grad()
def causal_check(model: Any, role: str, heads: Sequence[tuple[int, int]], *, n: int = 20, batch: int = 32,
                 seed: int = 0, bos: int | None = None, vocab: int | None = None, n_boot: int = 1000,
                 kl_small: float = 0.1, roles: HeadRoles | None = None) -> RoleCheck:
    """Mean-ablate `heads` [(layer, head), ...] and measure the behaviour `role` names (module docstring).

    `roles`: `head_roles` of the unablated model on this probe (same n, batch, seed, bos, vocab), when
    the caller has it; previous- and duplicate-token checks otherwise compute it to find the
    downstream induction heads.

    Example::

        from mechscope.circuits import causal_check
        check = causal_check(ms.load("zoo:induction-quick"), "previous_token", [(0, 2)], n=12)
        print(check.expect, check.passed)
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    heads = tuple((int(l), int(h)) for l, h in heads)
    if not heads:
        raise ValueError("give at least one (layer, head) to ablate")
    model = wrap(model)
    vocab = int(model.weights().W_E.shape[0]) if vocab is None else vocab
    off = 0 if bos is None else 1
    ids = repeated_tokens(vocab, n, batch, seed, bos)
    ref_ids = repeated_tokens(vocab, n, batch, seed + 1, bos)
    ablate = _mean_ablation(model, heads, ref_ids)
    probe = f"repeated random tokens (n={n}, seed {seed}); mean over the same probe with seed {seed + 1}"

    if role == "induction":
        metric, expect = "loss on the repeated segment (nats)", "increase"
        clean = _repeat_loss(run(model, ids).logits, ids, n, off)
        abl = _repeat_loss(run(model, ids, interventions=ablate).logits, ids, n, off)
    elif role in ("previous_token", "duplicate_token"):
        first = min(l for l, _ in heads)
        if roles is None:
            roles = head_roles(model, n=n, batch=batch, seed=seed, bos=bos, vocab=vocab)
        later = roles.induction.clone()
        later[: first + 1] = float("-inf")
        down = [(int(l), int(h)) for l, h in (later > 0.3).nonzero()] or \
            [divmod(int(later.flatten().argmax()), later.shape[1])]
        metric = "prefix-matching score of downstream induction heads " + ", ".join(f"L{l}H{h}" for l, h in down)
        expect = "decrease"
        sites = sorted({Site(Kind.PATTERN, l) for l, _ in down})

        def pm(res) -> Tensor:
            per_head = [_prefix_matching(res.cache[Site(Kind.PATTERN, l)][:, h], n, off) for l, h in down]
            return torch.stack(per_head).mean(0)

        clean = pm(run(model, ids, capture=sites))
        abl = pm(run(model, ids, capture=sites, interventions=ablate))
    elif role == "bos":
        metric, expect = "KL(clean || ablated) of next-token distributions, mean over positions (nats)", "small"
        lp = run(model, ids).logits.double().log_softmax(-1)
        lq = run(model, ids, interventions=ablate).logits.double().log_softmax(-1)
        clean = torch.zeros(ids.shape[0], dtype=torch.float64)
        abl = (lp.exp() * (lp - lq)).sum(-1).mean(-1)
    else:  # copy_suppression
        metric, expect = "centred logit of the predicted token where it occurred earlier", "increase"
        c = run(model, ids).logits.double()
        pred = c.argmax(-1)
        T = ids.shape[1]
        seen = ((ids[:, None, :] == pred[:, :, None]) & torch.ones(T, T, dtype=torch.bool).tril(-1)).any(-1)
        a = run(model, ids, interventions=ablate).logits.double()

        def centred(lg: Tensor) -> Tensor:
            v = lg.gather(-1, pred[..., None]).squeeze(-1) - lg.mean(-1)
            return (v * seen).sum(1) / seen.sum(1).clamp_min(1)

        clean, abl = centred(c), centred(a)
    effect = abl.double() - clean.double()
    how = {"ablation": "mean", "reference": probe, "heads": [f"L{l}H{h}" for l, h in heads], "site": "attn.z",
           "role": role, "behaviour": metric}
    score = Score.from_items(effect, f"{role} causal effect (ablated - clean)", dataset="repeated random tokens",
                             seed=seed, how=how, n_boot=n_boot)
    lo, hi = score.ci
    passed = {"increase": lo > 0, "decrease": hi < 0, "small": hi < kl_small}[expect]
    return RoleCheck(role, heads, metric, float(clean.double().mean()), float(abl.double().mean()), score, expect,
                     bool(passed))
