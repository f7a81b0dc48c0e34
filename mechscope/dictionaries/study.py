"""One dictionary on one model, end to end: harvest, train, measure, and write it all down.

Steps of `study`:
1. harvest the input site (and the output site of a transcoder, or every source of a crosscoder)
   over `tokens` into `out/store` (resumable; the last `held_out_fraction` of shards held out);
2. train the dictionary on shuffled training rows (`ShuffleBuffer`) for `train.tokens` rows;
3. measure on the held-out rows: L0, FVU, dead and dense latents, the density histogram, and the
   token diversity of top activations against the site's basis and random directions;
4. splice it into the model on `eval_sequences` held-out sequences: loss recovered against zero
   and mean ablation;
5. save the dictionary (SAELens layout) and `report.json` (everything above, with wall times and
   the training curve) under `out/NAME`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.run import resolve
from .crosscoder import CrosscoderConfig
from .files import write_json
from .metrics import LossFn, evaluate, loss_recovered, next_token_ce
from .polysemanticity import baseline_diversity, dictionary_diversity, neuron_spread
from .registry import ARCHITECTURES, build
from .saelens import save
from .store import ActivationStore, HarvestConfig, ShuffleBuffer, harvest
from .train import TrainConfig, train

# architectures that read a tuple of sites: those whose config has a crosscoder's sources
CROSSCODERS = tuple(name for name, (cfg, _) in ARCHITECTURES.items() if issubclass(cfg, CrosscoderConfig))


@dataclass(frozen=True)
class StudyConfig:
    """What to train where; `dictionary` holds the architecture's own fields (k, penalties, ...)."""

    architecture: str  # a registered architecture: relu, topk, batchtopk, jumprelu, transcoder, crosscoder
    site: str | tuple[str, ...]  # the input site; a crosscoder lists one site per source (layers)
    d_sae: int  # latents
    dictionary: dict[str, Any] = field(default_factory=dict)  # further architecture fields, e.g. {"k": 32}
    site_out: str | None = None  # a transcoder's target site (e.g. mlp_out.L)
    held_out_fraction: float = 0.1  # share of shards (sequences) kept for evaluation
    eval_sequences: int = 64  # held-out sequences spliced into the model for loss recovered
    drop_first: int = 0  # positions per sequence left out of training and of splicing (BOS / sink)
    seqs_per_shard: int = 128
    harvest_batch: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.site, list):
            object.__setattr__(self, "site", tuple(self.site))
        if not 0 < self.held_out_fraction < 1:
            raise ValueError(f"StudyConfig.held_out_fraction must be in (0, 1), got {self.held_out_fraction}")
        if (self.architecture == "transcoder") != (self.site_out is not None):
            raise ValueError("a transcoder needs site_out (its target), and only a transcoder has one")
        if (self.architecture in CROSSCODERS) != isinstance(self.site, tuple):
            raise ValueError("a crosscoder reads a tuple of sites (one per source); other architectures one site")

    @property
    def input_sites(self) -> tuple[str, ...]:
        """The site names the dictionary reads (one, or several for a crosscoder)."""
        return self.site if isinstance(self.site, tuple) else (self.site,)


def study(model: Any, tokens: Tensor, config: StudyConfig, train_config: TrainConfig, out: str | Path, *,
          name: str | None = None, loss: LossFn = next_token_ce, dataset: str = "unnamed",
          progress: bool = True, reducer: Any = None) -> dict[str, Any]:
    """Run the steps in the module docstring; returns the report (also written to out/NAME/report.json).

    With a `reducer` of several processes (`ddp.init_process_group`, under torchrun), rank 0 harvests
    while the others wait, every rank trains on its share of the training shards (`ddp.rank_batches`),
    and rank 0 alone measures and reports (the other ranks return an empty report)."""
    out = Path(out)
    c = config
    sites = [resolve(model, s) for s in c.input_sites]
    out_site = resolve(model, c.site_out) if c.site_out is not None else None
    keys = [s.name for s in sites] + ([out_site.name] if out_site is not None else [])
    t0 = time.perf_counter()
    rank = reducer.rank if reducer is not None else 0
    hcfg = HarvestConfig(sites=tuple(keys), seqs_per_shard=c.seqs_per_shard, batch_size=c.harvest_batch,
                         drop_first=c.drop_first)
    if rank == 0:
        store = harvest(model, tokens, out / "store", hcfg, progress=progress)
    if reducer is not None:
        reducer.barrier()
        store = ActivationStore(out / "store")
    t_harvest = time.perf_counter() - t0
    n_held = max(1, round(len(store.shards) * c.held_out_fraction))
    train_shards, held_shards = store.split(n_held)
    widths = store.widths
    kw: dict[str, Any] = dict(c.dictionary)
    if c.architecture in CROSSCODERS:
        if len({widths[k] for k in keys}) != 1:
            raise ValueError(f"crosscoder sources must share one width, got {[widths[k] for k in keys]}")
        kw |= {"d_in": widths[keys[0]], "n_sources": len(keys)}
    else:
        kw |= {"d_in": widths[keys[0]]}
    if out_site is not None:
        kw |= {"d_out": widths[out_site.name], "site_out": out_site.name}
    dictionary = build(c.architecture, d_sae=c.d_sae, seed=c.seed, site=",".join(s.name for s in sites),
                       model=getattr(model, "name", None), **kw)
    name = name or f"{c.architecture}-{'+'.join(s.short for s in sites)}-{c.d_sae}"
    t0 = time.perf_counter()
    if reducer is None:
        batches = ShuffleBuffer(store, keys, train_config.batch_size, shards=train_shards, seed=c.seed)
    else:
        from .ddp import rank_batches

        batches = rank_batches(store, keys, train_config.batch_size, rank, reducer.world, train_shards, c.seed)
    if reducer is not None:
        dictionary.to(reducer.device)  # each rank trains on its own device (its GPU under NCCL)
    device = dictionary.W_enc.device
    result = train(dictionary, (tuple(t.to(device) for t in b) for b in batches), train_config,
                   progress=progress and rank == 0, description=name, reducer=reducer)
    if rank != 0:
        return {}
    t_train = time.perf_counter() - t0
    # held-out measurements
    t0 = time.perf_counter()
    held = store.load(keys + ["tokens"], held_shards)
    held_tokens = held.pop()
    dictionary.to(held_tokens.device)  # measured where the store's rows are
    rows: Tensor | tuple[Tensor, ...] = torch.stack(held, 1) if c.architecture in CROSSCODERS else tuple(held)
    metrics = evaluate(dictionary, rows)
    report: dict[str, Any] = {
        "name": name, "model": getattr(model, "name", None), "dataset": dataset, "store": str(out / "store"),
        "store_config_hash": store.config_hash, "study": asdict(c), "train": asdict(train_config),
        "dictionary": dictionary.config.to_dict(), "architecture": dictionary.architecture,
        "rows_trained": result.tokens, "rows_held_out": metrics.n_rows,
        "seconds": {"harvest": t_harvest, "train": t_train},
        "train_tokens_per_second": result.tokens_per_second, "metrics": metrics.describe(),
        "curve": result.curve,
    }
    if c.architecture not in (*CROSSCODERS, "transcoder"):
        x = held[0]
        report["token_diversity"] = {"latents": dictionary_diversity(dictionary, x, held_tokens).describe(),
                                     **{k: v.describe() for k, v in baseline_diversity(x, held_tokens).items()}}
        report["neuron_spread"] = {"dictionary": neuron_spread(dictionary, x).describe(),
                                   "rotated_control": neuron_spread(dictionary, x, rotate_seed=c.seed).describe()}
    # splice into the model on held-out sequences
    seqs = store.load(["seq"], held_shards)[0].unique()[: c.eval_sequences]
    positions = slice(c.drop_first, None) if c.drop_first else None
    splice_site = out_site if out_site is not None else (sites if len(sites) > 1 else sites[0])
    lr = loss_recovered(model, dictionary, tokens[seqs], splice_site,
                        input_site=sites[0] if out_site is not None else None, positions=positions, loss=loss,
                        dataset=dataset, seed=c.seed, progress=progress)
    report["loss_recovered"] = lr.describe()
    report["seconds"]["evaluate"] = time.perf_counter() - t0
    save(dictionary, out / name)
    write_json(out / name / "report.json", report)
    return report


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a study report."""
    m, lr = report["metrics"], report["loss_recovered"]
    return {"name": report["name"], "l0": m["l0"], "fvu": m["fvu"], "dead": m["dead_fraction"],
            "dense": m["dense_fraction"], "loss_clean": lr["loss_clean"], "loss_spliced": lr["loss_spliced"],
            "recovered_vs_zero": lr["recovered_vs_zero"]["value"], "recovered_vs_mean": lr["recovered_vs_mean"]["value"],
            "rows_trained": report["rows_trained"], "seconds": report["seconds"]}


def open_store(out: str | Path) -> ActivationStore:
    """The activation store of the study directory `out`."""
    return ActivationStore(Path(out) / "store")
