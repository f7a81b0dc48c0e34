"""The replacement model: every MLP of a transcoder set's layers replaced at once, and how close it is.

In the replaced run, MLP L's output is the transcoder's output computed from MLP L's input *in that
run* (so the errors of earlier replacements reach later layers, as in the model an attribution
graph is built on): core `Replace` interventions on the output sites, each reading the input site
captured earlier in the same forward pass. A cross-layer transcoder's layer-t output is the sum of
what the latents of layers <= t write to it, their codes computed as the pass reaches each layer.

`replacement_scores` measures, on held-out token sequences:
- KL: the mean over predicted positions of KL(clean next-token distribution || replaced one);
- loss recovered = (L_ablated - L_replaced) / (L_ablated - L_clean), against zero ablation and
  against mean ablation of all the set's MLP outputs at once (per-sequence next-token loss, each a
  Score with a paired bootstrap interval over sequences).
`positions` restricts the replacement and the ablations (slice(1, None) leaves BOS alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.interventions import Context, Intervention, Mean, Replace, Zero
from ..core.progress import progress_bar
from ..core.run import model_device, resolve, run
from ..core.score import Score
from ..core.site import Site
from .base import Dictionary
from .metrics import _ratio_score, next_token_ce
from .store import capture_sites
from .transcoder_set import TranscoderSet


def replacement_interventions(model: Any, tset: TranscoderSet, positions: Any = None
                              ) -> tuple[list[Intervention], list[Site]]:
    """(interventions, sites to capture) that run `model` as its replacement model: each MLP output
    replaced by the set's transcoder(s) reading the MLP inputs of the same pass.

    Example::

        from mechscope.dictionaries import replacement_interventions
        ivs, sites = replacement_interventions(model, tset)
        ms.run(model, tokens, capture=sites, interventions=ivs).logits   # (batch, pos, vocab)
    """
    where = {} if positions is None else {"positions": positions}
    ins = {layer: resolve(model, tset.input_site(layer)) for layer in tset.layers}
    outs = {layer: resolve(model, tset.output_site(layer)) for layer in tset.layers}
    ivs: list[Intervention] = []
    if tset.clt is not None:
        clt = tset.clt
        codes: dict[int, Tensor] = {}  # index in the set -> (rows, m) codes; refilled every pass

        def clt_fn(i: int, layer: int):
            def fn(x: Tensor, ctx: Context) -> Tensor:
                if i == 0:
                    codes.clear()
                a = ctx.cache[ins[layer]]
                codes[i] = clt.encode_layer(i, a.reshape(-1, a.shape[-1]))
                return clt.decode_layer(i, codes).reshape(x.shape).to(x.dtype)
            return fn

        ivs = [Replace(outs[layer], fn=clt_fn(i, layer), **where) for i, layer in enumerate(tset.layers)]
    else:
        def tc_fn(tc: Dictionary, inp: Site):
            def fn(x: Tensor, ctx: Context) -> Tensor:
                a = ctx.cache[inp]
                return tc(a.reshape(*a.shape[:2], -1)).reshape(x.shape).to(x.dtype)
            return fn

        ivs = [Replace(outs[layer], fn=tc_fn(tset.transcoders[layer], ins[layer]), **where) for layer in tset.layers]
    return ivs, list(ins.values())


def _kl(clean: Tensor, other: Tensor, positions: Any) -> Tensor:
    """(batch,) mean over positions of KL(softmax(clean) || softmax(other))."""
    lp, lq = clean.float().log_softmax(-1), other.float().log_softmax(-1)
    kl = (lp.exp() * (lp - lq)).sum(-1).cpu().double()  # (batch, pos); float64 on the CPU (MPS has none)
    return (kl[:, positions] if positions is not None else kl).mean(-1)


@dataclass(frozen=True)
class ReplacementScores:
    """How close the replacement model is: KL to the clean model and loss recovered against zero and mean
    ablation.

    Example::

        from mechscope.dictionaries import replacement_scores
        s = replacement_scores(model, tset, tokens[:32])
        s.kl, s.vs_mean                          # KL to the model, loss recovered against mean ablation
    """

    kl: float  # mean next-token KL(clean || replaced) per position
    kl_max: float  # the largest per-sequence mean KL
    clean: float
    replaced: float
    zero: float
    mean: float
    vs_zero: Score
    vs_mean: Score
    n_sequences: int

    def describe(self) -> dict[str, Any]:
        """A JSON-ready record of the scores."""
        return {"kl": self.kl, "kl_max_sequence": self.kl_max, "loss_clean": self.clean,
                "loss_replaced": self.replaced, "loss_zero_ablated": self.zero, "loss_mean_ablated": self.mean,
                "recovered_vs_zero": self.vs_zero.describe(), "recovered_vs_mean": self.vs_mean.describe(),
                "n_sequences": self.n_sequences}


@torch.no_grad()
def replacement_scores(model: Any, tset: TranscoderSet, tokens: Tensor, *, positions: Any = None,
                       batch_size: int = 8, dataset: str = "unnamed", seed: int = 0,
                       progress: bool = False) -> ReplacementScores:
    """KL and loss recovered of the replacement model on `tokens` (n_seq, seq_len); module docstring. The
    transcoders are moved to the model's device; the sums are gathered in float64 on the CPU (MPS has none).

    Example::

        from mechscope.dictionaries import replacement_scores
        s = replacement_scores(model, tset, tokens[:32])         # tokens (n_seq, seq_len)
        s.describe()
    """
    device = model_device(model)
    for d in ([tset.clt] if tset.clt is not None else list(tset.transcoders.values())):
        d.eval().to(device)
    outs = [resolve(model, tset.output_site(layer)) for layer in tset.layers]
    batches = [tokens[s:s + batch_size] for s in range(0, tokens.shape[0], batch_size)]
    sums: list[Tensor] = [torch.zeros(())] * len(outs)
    count = 0
    for ids in batches:  # the MLP outputs' means over these tokens, for mean ablation
        got = capture_sites(model, ids, outs)
        for j, s in enumerate(outs):
            a = got[s][:, positions] if positions is not None else got[s]
            sums[j] = sums[j] + a.cpu().double().sum((0, 1))
        count += (got[outs[0]][:, positions] if positions is not None else got[outs[0]]).shape[:2].numel()
    means = [(m / count).float() for m in sums]
    where = {} if positions is None else {"positions": positions}
    replace, capture = replacement_interventions(model, tset, positions)
    L: dict[str, list[Tensor]] = {"clean": [], "replaced": [], "zero": [], "mean": [], "kl": []}
    for ids in progress_bar(batches, desc="replacement model", unit="batch", disable=not progress):
        clean = run(model, ids)
        L["clean"].append(next_token_ce(clean, clean).cpu().double())
        rep = run(model, ids, capture=capture, interventions=replace)
        L["replaced"].append(next_token_ce(rep, clean).cpu().double())
        L["kl"].append(_kl(clean.logits, rep.logits, positions))
        del rep
        for name, ivs in (("zero", [Zero(s, **where) for s in outs]),
                          ("mean", [Mean(s, mean=m, **where) for s, m in zip(outs, means)])):
            L[name].append(next_token_ce(run(model, ids, interventions=ivs), clean).cpu().double())
        del clean
    T = {k: torch.cat(v) for k, v in L.items()}
    how = {"layers": tset.layers, "kind": tset.kind, "positions": str(positions) if positions is not None else "all",
           "loss": "next_token_ce", "replaced": "every MLP of the set at once"}
    return ReplacementScores(
        kl=float(T["kl"].mean()), kl_max=float(T["kl"].max()), clean=float(T["clean"].mean()),
        replaced=float(T["replaced"].mean()), zero=float(T["zero"].mean()), mean=float(T["mean"].mean()),
        vs_zero=_ratio_score(T["zero"], T["replaced"], T["clean"], "loss_recovered", {**how, "ablation": "zero"},
                             dataset, seed),
        vs_mean=_ratio_score(T["mean"], T["replaced"], T["clean"], "loss_recovered", {**how, "ablation": "mean"},
                             dataset, seed),
        n_sequences=int(T["clean"].numel()))
