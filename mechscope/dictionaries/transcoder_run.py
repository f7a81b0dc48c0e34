"""Transcoders for every layer of a model, end to end and resumable: harvest once, train layer by
layer, evaluate the replacement model; the result is a transcoder set (`transcoder_set.py`).

Steps of `train_transcoder_set`:
1. harvest every chosen layer's MLP input and MLP output over `tokens` into `out/store` (one store,
   one pass over the model; resumable as any harvest: `store.py`); the last `held_out_fraction` of
   its shards are held out;
2. hash the run (the config and the store's hash): a directory holding another run is refused;
3. per layer, in order: if `out/layer_LLL.safetensors` exists, was written by this run and its digest
   checks out, keep it; otherwise train that layer's transcoder on shuffled training rows, measure
   FVU, L0 and dead fraction on the held-out rows, and write the file (atomically, the record in
   its metadata), then the manifest. A ReLU transcoder (activation "relu") is by default trained
   as a TopK one first, converted (`relu_transcoder.from_topk`) and fine-tuned with its L1 penalty
   on as many rows again, at an eighth of the learning rate (`relu_start="random"`: from
   scratch, which trains badly on short budgets). A cross-layer transcoder is one unit (`clt.safetensors`),
   trained on every layer's rows at once. A run killed at any moment (SIGKILL included) and started
   again keeps every finished layer and trains the unfinished one again from its start; training
   is deterministic, so the set equals an uninterrupted run's;
4. evaluate the replacement model (`replacement.py`) on `eval_tokens`, every MLP replaced at once,
   and write the scores into the manifest, which is then marked complete.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.progress import note
from ..core.run import resolve
from .files import DictionaryFileError, config_hash, read_json
from .metrics import evaluate
from .registry import build
from .relu_transcoder import from_topk
from .replacement import replacement_scores
from .store import HarvestConfig, ShuffleBuffer, harvest, model_fingerprint
from .train import TrainConfig, train
from .transcoder_set import (CLT_FILE, FORMAT, MANIFEST, TranscoderSet, layer_file, read_dictionary_file,
                             write_dictionary_file, write_manifest)


RELU_FINETUNE_LR = 0.125  # a ReLU set started from TopK fine-tunes λ at this share of the learning rate


@dataclass(frozen=True)
class TranscoderRunConfig:
    """What `train_transcoder_set` trains.

    Example::

        from mechscope.dictionaries import TrainConfig, TranscoderRunConfig
        cfg = TranscoderRunConfig(layers=(0, 1, 2, 3), d_latent=2048, k=32, train=TrainConfig(tokens=1_000_000))
    """

    layers: tuple[int, ...]  # the layers whose MLPs get a transcoder
    d_latent: int  # latents per layer
    k: int = 32  # active latents per token (per layer for a CLT); with activation "relu", the target L0
    clt: bool = False  # one cross-layer transcoder instead of one transcoder per layer
    activation: str = "topk"  # per-layer transcoders: "topk" (k fixed) or "relu" (L1, adapted to L0 k)
    l1_coefficient: float = 3.0  # activation "relu": λ's starting value (relu.py)
    relu_start: str = "topk"  # activation "relu": "topk" (convert a trained TopK, then fine-tune λ) or "random"
    skip: bool = False  # per-layer transcoders with a linear skip connection
    input_site: str = "ln2.{layer}"  # the MLP's input (normalised residual) site pattern
    output_site: str = "mlp_out.{layer}"  # the MLP's output site pattern
    train: TrainConfig = TrainConfig(tokens=1_000_000)  # per layer (and for the CLT as a whole)
    held_out_fraction: float = 0.1
    drop_first: int = 0  # positions per sequence never stored or replaced (BOS)
    seqs_per_shard: int = 128
    harvest_batch: int = 8
    dtype: str = "float32"  # storage dtype of the harvest
    eval_batch: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(layer) for layer in self.layers))
        if not self.layers or len(set(self.layers)) != len(self.layers) or list(self.layers) != sorted(self.layers):
            raise ValueError(f"TranscoderRunConfig.layers must be distinct ascending layers, got {self.layers}")
        if self.clt and self.skip:
            raise ValueError("the skip connection belongs to per-layer transcoders; a CLT has none")
        if self.activation not in ("topk", "relu"):
            raise ValueError(f"TranscoderRunConfig.activation must be 'topk' or 'relu', got {self.activation!r}")
        if self.relu_start not in ("topk", "random"):
            raise ValueError(f"TranscoderRunConfig.relu_start must be 'topk' or 'random', got {self.relu_start!r}")
        if self.activation == "relu" and (self.clt or self.skip):
            raise ValueError("ReLU transcoders are per-layer and without a skip connection (clt and skip need topk)")
        if self.d_latent < 1 or not 1 <= self.k <= self.d_latent:
            raise ValueError(f"need 1 <= k ({self.k}) <= d_latent ({self.d_latent})")
        if not 0 < self.held_out_fraction < 1:
            raise ValueError(f"held_out_fraction must be in (0, 1), got {self.held_out_fraction}")

    @property
    def kind(self) -> str:
        """"clt" or "per-layer"."""
        return "clt" if self.clt else "per-layer"

    @property
    def architecture(self) -> str:
        """The registered architecture of each unit: "clt", "transcoder" (TopK) or "relu_transcoder"."""
        return "clt" if self.clt else "relu_transcoder" if self.activation == "relu" else "transcoder"

    def hashed(self) -> dict[str, Any]:
        """The config as the run's hash reads it: the ReLU fields only when the activation is ReLU, so a
        TopK run keeps the hash it had before they existed (and resumes)."""
        d = json.loads(json.dumps(asdict(self)))
        if self.activation == "topk":
            del d["activation"], d["l1_coefficient"], d["relu_start"]
        elif self.relu_start == "random":  # as ReLU runs were hashed before the TopK start existed
            del d["relu_start"]
        return d


def _record(metrics: Any, seconds: float, tokens: int) -> dict[str, float]:
    return {"fvu": metrics.fvu, "l0": metrics.l0, "dead_fraction": metrics.dead_fraction,
            "dense_fraction": metrics.dense_fraction, "held_out_rows": metrics.n_rows, "train_seconds": seconds,
            "train_tokens": tokens}


def train_transcoder_set(model: Any, tokens: Tensor, eval_tokens: Tensor, config: TranscoderRunConfig,
                         out: str | Path, *, dataset: str = "unnamed", progress: bool = True) -> TranscoderSet:
    """Run the steps in the module docstring; returns the finished set (also on disk in `out`).

    Example::

        from mechscope.dictionaries import TranscoderRunConfig, train_transcoder_set
        cfg = TranscoderRunConfig(layers=(0, 1, 2, 3), d_latent=2048)
        tset = train_transcoder_set(model, tokens, eval_tokens, cfg, "runs/tc")   # (n_seq, seq_len) each
    """
    from .transcoder_set import load_transcoder_set

    out = Path(out)
    c = config
    ins = {L: resolve(model, c.input_site.format(layer=L)) for L in c.layers}
    outs = {L: resolve(model, c.output_site.format(layer=L)) for L in c.layers}
    keys = [ins[L].name for L in c.layers] + [outs[L].name for L in c.layers]
    t0 = time.perf_counter()
    store = harvest(model, tokens, out / "store", HarvestConfig(sites=tuple(keys), batch_size=c.harvest_batch,
                    seqs_per_shard=c.seqs_per_shard, drop_first=c.drop_first, dtype=c.dtype), progress=progress)
    t_harvest = time.perf_counter() - t0
    n_held = max(1, round(len(store.shards) * c.held_out_fraction))
    train_shards, held_shards = store.split(n_held)
    widths = store.widths
    d_model, d_out = widths[keys[0]], widths[keys[len(c.layers)]]
    config_json = c.hashed()
    run_hash = config_hash({"config": config_json, "store": store.config_hash})
    manifest = _open_manifest(out, run_hash, {
        "format": FORMAT, "kind": c.kind, "model": getattr(model, "name", None),
        "model_fingerprint": model_fingerprint(model.module), "layers": list(c.layers),
        "sites": {str(L): {"input": ins[L].name, "output": outs[L].name} for L in c.layers},
        "d_model": d_model, "d_out": d_out, "d_latent": c.d_latent, "k": c.k,
        "architecture": c.architecture, "skip": c.skip, "run_hash": run_hash, "config": config_json,
        "dataset": dataset, "training": {"tokens_per_layer": c.train.tokens, "batch_size": c.train.batch_size,
                                         "harvest_rows": store.n_rows, "harvest_seconds": t_harvest},
        "per_layer": {}, "trained": False, "complete": False})
    if c.clt:
        _train_clt(model, store, manifest, c, keys, train_shards, held_shards, d_model, d_out, out, progress)
    else:
        for L in c.layers:
            _train_layer(model, store, manifest, c, L, ins[L].name, outs[L].name, train_shards, held_shards,
                         d_model, d_out, out, progress)
    manifest["trained"] = True
    write_manifest(out, manifest)
    tset = load_transcoder_set(out)
    if not manifest.get("replacement"):
        t0 = time.perf_counter()
        scores = replacement_scores(model, tset, eval_tokens, positions=slice(c.drop_first, None) if c.drop_first
                                    else None, batch_size=c.eval_batch, dataset=dataset, seed=c.seed,
                                    progress=progress)
        manifest["replacement"] = {**scores.describe(), "seconds": time.perf_counter() - t0}
    manifest["complete"] = True
    write_manifest(out, manifest)
    tset.manifest = manifest
    return tset


def _open_manifest(out: Path, run_hash: str, fresh: dict[str, Any]) -> dict[str, Any]:
    path = out / MANIFEST
    if path.is_file():
        manifest = read_json(path)
        if manifest.get("run_hash") != run_hash:
            raise DictionaryFileError(f"{out} holds another transcoder run (hash {manifest.get('run_hash')}, this one "
                                      f"is {run_hash}: other layers, widths, training or tokens); use another --out or "
                                      "delete it")
        manifest["training"] = {**fresh["training"], **{k: v for k, v in manifest["training"].items()
                                                        if k == "harvest_seconds"}}
        return manifest
    write_manifest(out, fresh)
    return fresh


def _finished(path: Path, run_hash: str) -> dict[str, Any] | None:
    """The record of a unit this run finished before, or None (absent, another run's, or damaged)."""
    if not path.is_file():
        return None
    try:
        _, meta = read_dictionary_file(path)
    except DictionaryFileError:
        return None
    return json.loads(meta["record"]) if meta.get("run_hash") == run_hash and "record" in meta else None


def _buffer(store: Any, keys: list[str], c: TranscoderRunConfig, shards: list[int], seed: int) -> ShuffleBuffer:
    """Shuffled training batches; the buffer is at most the training rows (a larger one would read a
    small store many times over before serving its first batch)."""
    rows = sum(store.manifest["shards"][str(i)]["rows"] for i in shards)
    return ShuffleBuffer(store, keys, c.train.batch_size, shards=shards, seed=seed,
                         buffer_rows=max(c.train.batch_size, min(1 << 16, rows)))


def _train_layer(model: Any, store: Any, manifest: dict[str, Any], c: TranscoderRunConfig, L: int, inp: str,
                 outp: str, train_shards: list[int], held_shards: list[int], d_model: int, d_out: int, out: Path,
                 progress: bool) -> None:
    path = out / layer_file(L)
    done = _finished(path, manifest["run_hash"])
    if done is not None:
        manifest["per_layer"][str(L)] = done
        write_manifest(out, manifest)
        return
    common = dict(d_in=d_model, d_out=d_out, d_sae=c.d_latent, seed=c.seed + L, site=inp, site_out=outp,
                  model=manifest["model"])
    t0 = time.perf_counter()
    batches = _buffer(store, [inp, outp], c, train_shards, c.seed + L)
    from_scratch = c.activation == "relu" and c.relu_start == "random"
    tc = (build("relu_transcoder", l1_coefficient=c.l1_coefficient, target_l0=float(c.k), **common) if from_scratch
          else build("transcoder", k=c.k, skip=c.skip, **common))
    warm = c.activation == "relu" and not from_scratch  # the TopK trained first is converted and fine-tuned
    tokens = train(tc, batches, c.train, progress=progress,
                   description=f"transcoder layer {L}" + (" (TopK start)" if warm else "")).tokens
    if warm:
        x, = store.load([inp], train_shards[:1])
        tc = from_topk(tc, x, l1_coefficient=c.l1_coefficient)
        tokens += train(tc, batches, replace(c.train, lr=c.train.learning_rate(c.d_latent) * RELU_FINETUNE_LR,
                                             initialise=False),
                        progress=progress, description=f"transcoder layer {L} (ReLU)").tokens
    seconds = time.perf_counter() - t0
    record = _record(evaluate(tc, tuple(store.load([inp, outp], held_shards))), seconds, tokens)
    write_dictionary_file(path, tc, {"layer": str(L), "run_hash": manifest["run_hash"], "record": record})
    manifest["per_layer"][str(L)] = record
    write_manifest(out, manifest)
    note(f"layer {L}: FVU {record['fvu']:.4f}, L0 {record['l0']:.1f}, dead {record['dead_fraction']:.3f}, "
         f"{seconds:.0f} s")


@torch.no_grad()
def clt_layer_metrics(clt: Any, x: Tensor, y: Tensor, batch_size: int = 4096) -> list[dict[str, float]]:
    """Per target layer of a cross-layer transcoder on rows x (rows, n, d_in), y (rows, n, d_out): FVU
    of its reconstruction, and L0 and dead fraction of the latents that layer reads."""
    n, m = clt.config.n_layers, clt.config.per_layer
    err = torch.zeros(n, dtype=torch.float64)
    fired = torch.zeros(clt.config.d_sae, dtype=torch.float64)
    for s in range(0, x.shape[0], batch_size):
        xb, yb = x[s:s + batch_size], y[s:s + batch_size]
        codes = clt.codes(clt._flat(xb))
        recon = clt.decode(codes).reshape(yb.shape)
        err += (recon.double() - yb.double()).pow(2).sum((0, 2))
        fired += codes.fired().double()
    var = (y.double() - y.double().mean(0)).pow(2).sum((0, 2))
    density = (fired / x.shape[0]).reshape(n, m)
    return [{"fvu": float(err[t] / var[t].clamp_min(1e-30)), "l0": float(density[t].sum()),
             "dead_fraction": float((density[t] == 0).double().mean()), "held_out_rows": int(x.shape[0])}
            for t in range(n)]


def _train_clt(model: Any, store: Any, manifest: dict[str, Any], c: TranscoderRunConfig, keys: list[str],
               train_shards: list[int], held_shards: list[int], d_model: int, d_out: int, out: Path,
               progress: bool) -> None:
    path = out / CLT_FILE
    done = _finished(path, manifest["run_hash"])
    if done is None:
        n = len(c.layers)
        clt = build("clt", d_in=d_model, d_out=d_out, d_sae=c.d_latent * n, k=c.k, n_layers=n, seed=c.seed,
                    site=",".join(keys[:n]), site_out=",".join(keys[n:]), model=manifest["model"])
        t0 = time.perf_counter()
        result = train(clt, _buffer(store, keys, c, train_shards, c.seed), c.train, progress=progress,
                       description="cross-layer transcoder")
        seconds = time.perf_counter() - t0
        held = store.load(keys, held_shards)
        per = clt_layer_metrics(clt, torch.stack(held[:n], 1), torch.stack(held[n:], 1))
        done = {"per_layer": {str(L): r for L, r in zip(c.layers, per)}, "train_seconds": seconds,
                "train_tokens": result.tokens}
        write_dictionary_file(path, clt, {"run_hash": manifest["run_hash"], "record": done})
    manifest["per_layer"] = done["per_layer"]
    manifest["training"] |= {"train_seconds": done["train_seconds"], "train_tokens": done["train_tokens"]}
    write_manifest(out, manifest)
