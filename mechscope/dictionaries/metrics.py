"""How good a dictionary is: sparsity, reconstruction, latent health, and loss with it spliced in.

- `evaluate`: L0 (mean active latents per row), FVU (fraction of variance unexplained,
  Σ||y - ŷ||² / Σ||y - ȳ||²), dead latents (never fire on the rows given), dense latents (fire on
  more than `dense_threshold` of them), each latent's firing density and a histogram of log10 density.
- `loss_recovered`: the model's loss with the dictionary's reconstruction in place of the site,
  against the clean model and against zero and mean ablation of the site:
      recovered = (L_ablated - L_spliced) / (L_ablated - L_clean)
  (1: as good as the model; 0: no better than deleting the site). Reported against both
  ablations, each a Score with a paired bootstrap interval over sequences.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.interventions import Context, Intervention, Mean, Patch, Replace, Zero
from ..core.metrics import next_token_loss
from ..core.progress import progress_bar
from ..core.run import RunResult, resolve, run
from ..core.score import Score
from ..core.site import Site
from .base import Dictionary
from .crosscoder import Crosscoder
from .sparse import SparseCodes
from .store import capture_sites


# --- sparsity, reconstruction, latent health ---------------------------------------------------------

@dataclass(frozen=True)
class DictMetrics:
    """Measured on `n_rows` rows (tokens).

    Example::

        from mechscope.dictionaries import evaluate
        m = evaluate(sae, x)   # x (rows, d_in)
        m.l0, m.fvu, m.dead_fraction
        m.density                                # (d_sae,): how often each latent fires
    """

    n_rows: int
    l0: float  # mean number of active latents per row
    fvu: float  # fraction of variance unexplained
    mse: float  # mean over rows of ||y - ŷ||²
    dead_fraction: float  # latents that fire on none of the rows
    dense_fraction: float  # latents that fire on more than dense_threshold of the rows
    dense_threshold: float
    density: Tensor = field(repr=False)  # (d_sae,) share of rows each latent fires on
    histogram: tuple[list[float], list[int]] = field(repr=False)  # log10-density bin edges, counts (live latents)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready record of the metrics, the density histogram included."""
        return {"n_rows": self.n_rows, "l0": self.l0, "fvu": self.fvu, "mse": self.mse,
                "dead_fraction": self.dead_fraction, "dense_fraction": self.dense_fraction,
                "dense_threshold": self.dense_threshold,
                "density_histogram": {"log10_edges": self.histogram[0], "counts": self.histogram[1]}}


def density_histogram(density: Tensor, lo: float = -7.0, hi: float = 0.0, bins: int = 28
                      ) -> tuple[list[float], list[int]]:
    """Bin edges of log10(density) from lo to hi and the counts of live latents in each bin.

    Example::

        from mechscope.dictionaries import density_histogram, evaluate
        edges, counts = density_histogram(evaluate(sae, x).density)   # density (d_sae,)
    """
    live = density[density > 0].double().log10().clamp(lo, hi - 1e-9)
    counts = torch.histc(live, bins=bins, min=lo, max=hi).long().tolist()
    edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
    return edges, counts


@torch.no_grad()
def evaluate(dictionary: Dictionary, data: Tensor | tuple[Tensor, ...] | Iterable[Any], *,
             batch_size: int = 4096, dense_threshold: float = 0.1) -> DictMetrics:
    """Metrics of `dictionary` on `data`: rows in memory ((x,) or (x, target)) or an iterable of batches.

    Example::

        from mechscope.dictionaries import evaluate
        m = evaluate(sae, x)                     # x (rows, d_in), or (x, target) for a transcoder
        m.describe()
    """
    was = dictionary.training
    dictionary.eval()
    if isinstance(data, Tensor):
        data = (data,)
    if isinstance(data, tuple):
        n = data[0].shape[0]
        data = [tuple(t[s:s + batch_size] for t in data) for s in range(0, n, batch_size)]
    d_sae = dictionary.config.d_sae
    fired = torch.zeros(d_sae, dtype=torch.float64)
    n_rows, active, err = 0, 0.0, 0.0
    y_sum = y_sq = None
    for batch in data:
        x, y = dictionary.split_batch(batch)
        codes = dictionary.codes(x)
        recon = dictionary.reconstruct(x, codes)
        if isinstance(codes, SparseCodes):
            fired += codes.fired().double()
            active += float((codes.values != 0).sum())
        else:
            nz = codes != 0
            fired += nz.sum(0).double()
            active += float(nz.sum())
        y = y.double()
        err += float((recon.double() - y).pow(2).sum())
        y_sum = y.sum(0) if y_sum is None else y_sum + y.sum(0)
        y_sq = y.pow(2).sum() if y_sq is None else y_sq + y.pow(2).sum()
        n_rows += x.shape[0]
    dictionary.train(was)
    if n_rows == 0:
        raise ValueError("evaluate got no rows")
    total_var = float(y_sq - y_sum.pow(2).sum() / n_rows)  # Σ||y - ȳ||²
    density = (fired / n_rows).float()
    return DictMetrics(n_rows=n_rows, l0=active / n_rows, fvu=err / max(total_var, 1e-30), mse=err / n_rows,
                       dead_fraction=float((density == 0).float().mean()),
                       dense_fraction=float((density > dense_threshold).float().mean()),
                       dense_threshold=dense_threshold, density=density, histogram=density_histogram(density))


# --- loss with the dictionary spliced in -----------------------------------------------------------

LossFn = Callable[[RunResult, RunResult], Tensor]  # (this run, the clean run) -> (batch,) loss per sequence


def next_token_ce(result: RunResult, clean: RunResult) -> Tensor:
    """(batch,) mean next-token cross-entropy of each sequence (padding excluded).

    Example::

        from mechscope.dictionaries import loss_recovered, next_token_ce
        loss_recovered(model, sae, tokens, "resid_post.14", loss=next_token_ce)   # the default
        # next_token_ce(result, clean) -> (batch,)
    """
    if result.logits is None:
        raise ValueError("this model has no logits (an encoder?): pass loss=embedding_distance to loss_recovered")
    p = result.prepared
    return next_token_loss(p.input_ids, p.attention_mask)(result.logits)


def embedding_distance(result: RunResult, clean: RunResult) -> Tensor:
    """(batch,) 1 - cos between the mean-pooled final hidden states and the clean run's (encoders).

    Example::

        from mechscope.dictionaries import embedding_distance, loss_recovered
        lr = loss_recovered(ms.load("minilm-l6"), sae, tokens, "resid_post.3", loss=embedding_distance)
        # embedding_distance(result, clean) -> (batch,)
    """
    def pooled(r: RunResult) -> Tensor:
        h = getattr(r.output, "last_hidden_state", None)
        if h is None:
            raise ValueError("embedding_distance needs an output with last_hidden_state")
        m = r.prepared.attention_mask
        m = torch.ones(h.shape[:2], dtype=h.dtype) if m is None else m.to(h.dtype)
        return (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp_min(1)

    return 1 - torch.nn.functional.cosine_similarity(pooled(result), pooled(clean), dim=-1)


@dataclass(frozen=True)
class LossRecovered:
    """Mean per-sequence losses and the share of the loss recovered, against both ablations.

    Example::

        from mechscope.dictionaries import loss_recovered
        lr = loss_recovered(model, sae, tokens[:64], "resid_post.14")
        lr.vs_zero, lr.vs_mean                   # Scores
        lr.clean, lr.spliced
    """

    clean: float
    spliced: float
    zero: float
    mean: float
    vs_zero: Score
    vs_mean: Score

    def describe(self) -> dict[str, Any]:
        """A JSON-ready record: the four losses and the loss recovered against zero and mean ablation."""
        return {"loss_clean": self.clean, "loss_spliced": self.spliced, "loss_zero_ablated": self.zero,
                "loss_mean_ablated": self.mean, "recovered_vs_zero": self.vs_zero.describe(),
                "recovered_vs_mean": self.vs_mean.describe()}


def _ratio_score(abl: Tensor, spl: Tensor, clean: Tensor, name: str, how: dict[str, Any], dataset: str,
                 seed: int, n_boot: int = 1000) -> Score:
    """(mean abl - mean spl) / (mean abl - mean clean) with a paired percentile bootstrap over sequences."""
    def ratio(i: Tensor) -> Tensor:
        a, s, c = abl[i].mean(-1), spl[i].mean(-1), clean[i].mean(-1)
        return (a - s) / (a - c)

    n = abl.numel()
    value = float(ratio(torch.arange(n)))
    g = torch.Generator().manual_seed(seed)
    boots = ratio(torch.randint(n, (n_boot, n), generator=g))
    lo, hi = torch.quantile(boots[boots.isfinite()], torch.tensor([0.025, 0.975], dtype=boots.dtype)).tolist()
    return Score(value=value, metric=name, ci=(lo, hi), aggregation="ratio of means over sequences",
                 dataset=dataset, n=n, seed=seed, how=how)


def _reshape_apply(dictionary: Dictionary, x: Tensor) -> Tensor:
    """Run the dictionary on a site tensor (batch, pos, ...), trailing axes flattened and restored."""
    flat = x.reshape(*x.shape[:2], -1)
    return dictionary(flat).reshape(x.shape).to(x.dtype)


@torch.no_grad()
def loss_recovered(model: Any, dictionary: Dictionary, tokens: Tensor, site: Site | str | Sequence[Site | str],
                   *, input_site: Site | str | None = None, batch_size: int = 8,
                   positions: slice | Sequence[int] | None = None, loss: LossFn = next_token_ce,
                   dataset: str = "unnamed", seed: int = 0, progress: bool = False) -> LossRecovered:
    """The model's loss with `dictionary` spliced in at `site`, against zero and mean ablation of it.

    - autoencoder: `site`'s activation is replaced by its reconstruction (later layers see it);
    - transcoder: give `input_site` (the MLP input); `site` (the MLP output) is replaced by the
      transcoder's output computed from the input site in the same forward pass;
    - crosscoder over layers of this model: `site` lists one site per source; every source is
      patched with its reconstruction from the clean activations of all sources.
    `positions` restricts splicing and ablation (e.g. slice(1, None) to leave the BOS position
    alone, as a dictionary trained without it should). The mean for mean ablation is the site's
    mean activation over the same tokens and positions.

    Example::

        from mechscope.dictionaries import loss_recovered
        lr = loss_recovered(model, sae, tokens[:64], "resid_post.14", positions=slice(1, None))  # (n_seq, seq_len)
        print(lr.vs_mean)
    """
    sites = [resolve(model, s) for s in (site if isinstance(site, (list, tuple)) else [site])]
    if isinstance(dictionary, Crosscoder) != (len(sites) > 1):
        raise ValueError("give one site per source for a crosscoder, and one site otherwise")
    inp = resolve(model, input_site) if input_site is not None else None
    pos = positions
    was = dictionary.training
    dictionary.eval()
    batches = [tokens[s:s + batch_size] for s in range(0, tokens.shape[0], batch_size)]
    # pass 1: the sites' mean activations over these tokens (forward passes stop after the sites)
    sums: list[Tensor | None] = [None] * len(sites)
    count = 0
    for ids in batches:
        got = capture_sites(model, ids, sites)
        for j, s in enumerate(sites):
            a = got[s][:, pos] if pos is not None else got[s]
            sums[j] = a.double().sum((0, 1)) if sums[j] is None else sums[j] + a.double().sum((0, 1))
        count += (got[sites[0]][:, pos] if pos is not None else got[sites[0]]).shape[:2].numel()
    means = [(m / count).float() for m in sums]
    where = {} if pos is None else {"positions": pos}
    # pass 2: per batch, the clean, spliced, zero-ablated and mean-ablated runs
    out: dict[str, list[Tensor]] = {"clean": [], "spliced": [], "zero": [], "mean": []}
    for ids in progress_bar(batches, desc="loss recovered", unit="batch", disable=not progress):
        clean = run(model, ids, capture=sites + ([inp] if inp is not None else []))
        out["clean"].append(loss(clean, clean).double())
        if isinstance(dictionary, Crosscoder):
            stacked = torch.stack([clean.cache[s].reshape(*clean.cache[s].shape[:2], -1) for s in sites], dim=2)
            recon = dictionary(stacked)  # (batch, pos, n_sources, d_in)
            splice: list[Intervention] = [Patch(s, value=recon[:, :, j].reshape(clean.cache[s].shape), **where)
                                          for j, s in enumerate(sites)]
            capture: list[Site] = []
        elif inp is not None:
            def fn(x: Tensor, ctx: Context, _inp: Site = inp) -> Tensor:
                return _reshape_apply(dictionary, ctx.cache[_inp]).reshape(x.shape).to(x.dtype)
            splice, capture = [Replace(sites[0], fn=fn, **where)], [inp]
        else:
            splice = [Replace(sites[0], fn=lambda x, ctx: _reshape_apply(dictionary, x), **where)]
            capture = []
        for name, ivs, cap in (("spliced", splice, capture),
                               ("zero", [Zero(s, **where) for s in sites], []),
                               ("mean", [Mean(s, mean=m.reshape(clean.cache[s].shape[2:]), **where)
                                         for s, m in zip(sites, means)], [])):
            res = run(model, ids, capture=cap, interventions=ivs)
            out[name].append(loss(res, clean).double())
        del clean  # its logits are large: one batch at a time
    dictionary.train(was)
    L = {k: torch.cat(v) for k, v in out.items()}
    how = {"site": ",".join(s.name for s in sites), "positions": str(pos) if pos is not None else "all",
           "input_site": inp.name if inp is not None else None, "loss": getattr(loss, "__name__", "loss")}
    return LossRecovered(clean=float(L["clean"].mean()), spliced=float(L["spliced"].mean()),
                         zero=float(L["zero"].mean()), mean=float(L["mean"].mean()),
                         vs_zero=_ratio_score(L["zero"], L["spliced"], L["clean"], "loss_recovered",
                                              {**how, "ablation": "zero"}, dataset, seed),
                         vs_mean=_ratio_score(L["mean"], L["spliced"], L["clean"], "loss_recovered",
                                              {**how, "ablation": "mean"}, dataset, seed))
