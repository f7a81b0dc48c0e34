"""The demo's modular-addition section: the zoo `modadd` network that groks (a + b) mod 113.

Steps:
1. the zoo run (`modadd-frac05` by default: train fraction 0.5, 1500 epochs): the cache's run, else
   the copy shipped in the package, else trained here (`--retrain` trains it here);
2. overview, with the key frequencies found from the neurons (each neuron's best 2-D Fourier
   frequency over (a, b), the frequencies holding >= 10 neurons) and the share of neurons one
   frequency explains;
3. attention of the "a b =" prompt;
4. activation patching (denoising) of each head's output and the residual stream per position,
   clean (a, b) against corrupt (a', b), metric logit[(a+b) mod p] - logit[(a'+b) mod p];
5. the training curves (train and test loss: memorisation, then grokking);
6. neuron dashboards of the 32 most variable MLP neurons at "=" over random pairs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from .. import artifacts as A
from .common import run_source, torch_threads, zoo_network


def modadd_section(w: A.ArtifactWriter, name: str = "modadd-frac05", *, threads: int = 1, progress: bool = False,
                   log: Any = None, scratch: Path = Path("out"), steps: int | None = None,
                   run_path: Path | None = None, retrain: bool = False, device: str | None = None) -> None:
    """Write the demo's modular-addition section into `w` (steps in the module docstring), training the zoo run
    first when needed."""
    from .. import zoo
    from ..causal import activation_patching
    from ..core import Kind, Site, metrics, run
    from ..features import FeatureSet, FeatureStore, build_dashboards
    from ..replications.grokking import neuron_frequencies

    say = log or (lambda *_: None)
    t0 = time.monotonic()
    with torch_threads(threads):
        zrun, model, hp = zoo_network(name, steps, run_path, progress, retrain, device)
        p = hp["p"]
        say(f"{name}: {run_source(zrun)} ({time.monotonic() - t0:.1f} s)")
        # neurons over every (a, b): key frequencies, found without being told
        a = torch.arange(p).repeat_interleave(p)
        b = torch.arange(p).repeat(p)
        everything = torch.stack([a, b, torch.full_like(a, p)], 1)
        post = Site(Kind.MLP_POST, 0)
        acts = run(model, everything, capture=[post]).cache[post][:, -1]  # (p*p, d_mlp) at "="
        freq, share = neuron_frequencies(acts.reshape(p, p, -1), p)
        counts = torch.bincount(freq[share > 0.85], minlength=p // 2 + 1)
        key = [int(k) for k in (counts >= 10).nonzero().flatten()]
        m = w.model(f"zoo:{name}")
        m.overview(**A.overview_from_model(model, recipe="modadd", variant=zoo.spec(name).variant or "full",
                                           steps=hp["steps"], task=f"(a + b) mod {p}", train_fraction=hp["frac_train"],
                                           key_frequencies=key,
                                           neurons_one_frequency=round(float((share > 0.85).float().mean()), 3)))
        # attention of one prompt
        ex = everything[[17 * p + 42]]
        pats = run(model, ex, capture=[Site(Kind.PATTERN, 0)]).cache[Site(Kind.PATTERN, 0)][0]
        m.attention(["17", "42", "="], pats.unsqueeze(0), prompt=f"17 + 42 mod {p} (answer {(17 + 42) % p})")
        # patching: change a, keep b
        g = torch.Generator().manual_seed(0)
        n = 32
        aa, bb = torch.randint(0, p, (n,), generator=g), torch.randint(0, p, (n,), generator=g)
        a2 = (aa + torch.randint(1, p, (n,), generator=g)) % p
        clean = torch.stack([aa, bb, torch.full_like(aa, p)], 1)
        corrupt = torch.stack([a2, bb, torch.full_like(aa, p)], 1)
        right, wrong = (aa + bb) % p, (a2 + bb) % p

        def fn(logits: torch.Tensor) -> torch.Tensor:
            k = logits.shape[0] // n
            return metrics.logit_diff(right.repeat(k), wrong.repeat(k)).fn(logits)

        ld = metrics.Metric("logit_diff", fn, last_position_only=True)
        heads = activation_patching(model, clean, corrupt, [Site(Kind.Z, 0)], ld, each_position=False, progress=False)
        m.patching("heads", **A.heatmap_from_patching(heads, metric="logit_diff"),
                   title="Each head's output patched clean -> corrupt (a changed): share of the logit difference")
        resid = activation_patching(model, clean, corrupt, [Site(Kind.RESID_PRE, 0), Site(Kind.RESID_MID, 0),
                                                            Site(Kind.RESID_POST, 0)], ld, each_head=False,
                                    progress=False)
        m.patching("resid", **A.heatmap_from_patching(resid, tokens=["a", "b", "="], metric="logit_diff"),
                   title="Residual stream patched per position (share restored)")
        m.training(**A.training_from_run(zrun))
        # neuron dashboards at "=" (the rule grammar reads tokens, which says little here: no explanations)
        var = acts.var(0)
        units = var.topk(32).indices.sort().values.tolist()
        feats = FeatureSet.neurons(post, units=units, d=acts.shape[1], name="mlp.post.0 neurons (top variance)")
        docs = everything[torch.randperm(p * p, generator=g)[:2048]]
        store_path = scratch / f".build-{name}.duckdb"
        store_path.unlink(missing_ok=True)
        with FeatureStore(store_path) as store:
            build_dashboards(model, feats, docs, store, dataset="random (a, b) pairs", k=8, reservoir=16,
                             context=(2, 0), progress=False)
        m.features(store_path)
        store_path.unlink(missing_ok=True)
        say(f"modadd section ({time.monotonic() - t0:.1f} s): key frequencies {key}")
