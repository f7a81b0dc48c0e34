#!/usr/bin/env python
"""llc_devinterp: mechscope's LLC estimate against devinterp 2.0.1's on the same network, data and sampler.

The network: the zoo's two-layer attention-only induction transformer (`zoo:induction`, 44k
parameters) at a training checkpoint (default the final step 3000; the cache's run when it has
the checkpoint, else the copy shipped in the package, which holds the final weights). The data:
6,400 sequences of 64 tokens from the recipe's own generator (seed 1). Loss: mean next-token
cross-entropy over every position.

Both estimate λ̂ = nβ · (mean SGLD minibatch loss - L_n(w*)) with the update
w <- w - ε/2 (nβ ∇L_batch(w) + γ (w - w*)) + N(0, ε) over every parameter, ε = 1e-3, γ = 100,
nβ = n / log n (passed to both explicitly: devinterp's `default_nbeta` would use the batch size,
m / log m), 4 chains x 300 draws, no burn-in, batch 32, 1 thread. The step size: with ε = 1e-4 a
chain's loss is still rising after 200 steps (mechscope flags it); with 3e-4 and 1e-3 it levels
off after about 100 and 50 steps at nβ·(excess loss) ≈ 498 and 502 (one chain of 400 steps each,
measured before this benchmark's settings were fixed).

devinterp 2.0.1, read from its source (`slt/sampling.py`, `slt/sampler.py`, `slt/llc.py`,
`optim/sgmcmc.py`): `sample()` with `SGMCMC.sgld`, the same update in the same order of
operations; chain c seeds the global torch RNG with init_seed + c and draws each parameter's noise
from it in `named_parameters` order; every chain reads the batches of one DataLoader over the
data (shuffle=True, drop_last, a generator seeded init_seed, its first epoch replayed by
`itertools.cycle`);
`compute_llc` averages the minibatch loss over every step *including burn-in* and subtracts
`init_loss`, the mean loss over `num_init_loss_batches` batches of the same loader. Here the burn-in
is 0 and `num_init_loss_batches` = n / 32, one epoch = all of the data, so both definitions agree.
Differences left: devinterp deep-copies the model per chain and runs it in train() mode (the
network has no dropout); it replays the first epoch's batch order where mechscope's own order
draws a new permutation per epoch (the matched run replays it too, through `batches=`).

Two comparisons:
- matched: mechscope with devinterp's seeds and its batch order (`batches=` gives the same
  DataLoader order): the same chains, so the estimates should agree closely;
- independent: mechscope with its own seeds and batch order (seed 1000): agreement as two
  samples of the same quantity.

The standard errors are both computed here from the per-chain values (ddof 1 over sqrt(chains));
devinterp's own `llc_std` (xarray's std, ddof 0) is reported beside them as `std_devinterp`.

Checks: `matched_within_10pct` (|ours / theirs - 1| <= 0.10), `independent_within_10pct` (the
same for the independent run), `healthy` (no warning on mechscope's side). Figures: the three
estimates, their per-chain values and standard errors, the ratio, the largest difference of the
matched loss traces, seconds per side.

`--vectorize` runs mechscope's chains as one vmapped pass (`sample(vectorize=True)`).

Usage:  .venv-devinterp/bin/python benchmarks/llc_devinterp.py [--step N] [--draws N] [--vectorize] [--quick]
        (bash benchmarks/setup_env.sh devinterp creates .venv-devinterp)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # devinterp's per-chain bars; mechscope reports in plain lines

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from _machine import cpu_snapshot, machine, other_cpu_share, progress  # noqa: E402


def load_network(name: str, step: int | None):
    from mechscope import zoo
    from mechscope.core.errors import LoadError

    try:
        return zoo.load_zoo(name, step=step), step
    except LoadError as e:
        progress(f"llc_devinterp: {e}; using the final weights instead")
        return zoo.load_zoo(name), None


class _Forward(nn.Module):
    """The network as devinterp's loss sees it: token ids -> logits (a module without a TransformerLens-like
    `cfg`, which devinterp would call with return_type=...)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.net(ids)


def loader_order(n: int, batch_size: int, seed: int):
    """The batch order devinterp's sampler reads: a DataLoader over the data with a seeded generator,
    its first epoch cycled."""
    from itertools import cycle

    from torch.utils.data import DataLoader

    def order(chain: int):
        return cycle(DataLoader(range(n), batch_size=batch_size, shuffle=True, drop_last=True,
                                generator=torch.Generator().manual_seed(seed)))
    return order


def run_devinterp(net: nn.Module, ids: torch.Tensor, a: argparse.Namespace, nbeta: float) -> dict:
    from datasets import Dataset
    from devinterp.slt.llc import compute_llc
    from devinterp.slt.lm_loss import lm_cross_entropy_loss
    from devinterp.slt.sampling import sample

    data = Dataset.from_dict({"input_ids": ids.tolist()}).with_format("torch")
    model = _Forward(net)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        samples = sample(model=model, dataset=data, observables={}, lr=a.eps, n_beta=nbeta, localization=a.gamma,
                         num_chains=a.chains, num_draws=a.draws, batch_size=a.batch, num_burnin_steps=0,
                         num_init_loss_batches=ids.shape[0] // a.batch, init_seed=a.seed, device="cpu",
                         output_path=Path(tmp) / "samples.zarr",
                         loss_fn=lambda m, x: lm_cross_entropy_loss(m(x), x))
        res = compute_llc(samples)
        seconds = time.perf_counter() - t0
        return {"llc": float(res.llc_mean), "per_chain": [float(v) for v in res.llc_per_chain.values],
                "std": float(res.llc_std), "init_loss": float(res.init_loss),
                "traces": torch.tensor(res.loss_trace.values, dtype=torch.float64), "seconds": seconds}


def run_mechscope(model, ids: torch.Tensor, a: argparse.Namespace, nbeta: float, seed: int, matched: bool) -> dict:
    from mechscope.landscape import SGLDConfig, estimate_llc

    cfg = SGLDConfig(step_size=a.eps, localization=a.gamma, nbeta=nbeta, chains=a.chains, draws=a.draws,
                     burn_in=0, batch_size=a.batch, seed=seed)
    t0 = time.perf_counter()
    est = estimate_llc(model, ids, config=cfg, batches=loader_order(ids.shape[0], a.batch, seed) if matched else None,
                       vectorize=a.vectorize)
    seconds = time.perf_counter() - t0
    return {"llc": est.llc, "per_chain": list(est.per_chain), "se": est.std_error, "init_loss": est.init_loss,
            "traces": est.traces, "warnings": list(est.warnings), "seconds": seconds}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--name", default="induction", help="zoo network (default induction)")
    p.add_argument("--step", type=int, default=3000, help="training checkpoint (default 3000, the last)")
    p.add_argument("--n", type=int, default=6400, help="sequences of data (default 6400)")
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--gamma", type=float, default=100.0)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--draws", type=int, default=300)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=100, help="devinterp's init_seed, and mechscope's in the matched run")
    p.add_argument("--quick", action="store_true", help="2 chains x 40 draws: a smoke test (its checks may fail)")
    p.add_argument("--vectorize", action="store_true", help="mechscope runs its chains vmapped (sample(vectorize=True))")
    a = p.parse_args()
    if a.quick:
        a.chains, a.draws = 2, 40
    torch.set_num_threads(1)
    figures: dict = {"eps": a.eps, "gamma": a.gamma, "chains": a.chains, "draws": a.draws, "batch": a.batch,
                     "n": a.n, "seed": a.seed, "vectorize": a.vectorize}
    checks: dict = {}
    start = cpu_snapshot()
    try:
        from mechscope.zoo.recipes.induction import make_batch

        model, step = load_network(a.name, a.step)
        figures["network"] = f"zoo:{a.name}" + (f"@{step}" if step is not None else " (final weights)")
        hp = model.zoo_run.config()["hparams"]
        ids = make_batch(a.n, hp, torch.Generator().manual_seed(1)).ids
        nbeta = a.n / math.log(a.n)
        figures["nbeta"] = nbeta
        progress(f"llc_devinterp: {figures['network']}, {sum(q.numel() for q in model.module.parameters())} "
                 f"parameters, n={a.n}, nβ={nbeta:.1f}, ε={a.eps}, γ={a.gamma}, {a.chains} chains x {a.draws} draws")
        import devinterp  # noqa: F401
        from importlib.metadata import version

        figures["devinterp"] = version("devinterp")
        theirs = run_devinterp(model.module, ids, a, nbeta)
        ours = run_mechscope(model, ids, a, nbeta, a.seed, matched=True)
        independent = run_mechscope(model, ids, a, nbeta, 1000, matched=False)
        ratio = ours["llc"] / theirs["llc"]
        ratio_ind = independent["llc"] / theirs["llc"]
        trace_diff = float((ours["traces"] - theirs["traces"]).abs().max())
        figures.update({
            "llc_mechscope": ours["llc"], "llc_devinterp": theirs["llc"], "llc_mechscope_independent": independent["llc"],
            "ratio": ratio, "ratio_independent": ratio_ind,
            "per_chain_mechscope": ours["per_chain"], "per_chain_devinterp": theirs["per_chain"],
            "per_chain_mechscope_independent": independent["per_chain"],
            "se_mechscope": ours["se"], "std_devinterp": theirs["std"],  # devinterp's llc_std: xarray's std, ddof 0
            "se_devinterp": float(torch.tensor(theirs["per_chain"]).std(unbiased=True)) / math.sqrt(a.chains),
            "se_mechscope_independent": independent["se"],
            "init_loss_mechscope": ours["init_loss"], "init_loss_devinterp": theirs["init_loss"],
            "matched_trace_max_abs_diff": trace_diff,
            "seconds_mechscope": ours["seconds"], "seconds_devinterp": theirs["seconds"],
            "seconds_ratio_devinterp_over_mechscope": theirs["seconds"] / ours["seconds"],
            "warnings_mechscope": ours["warnings"] + independent["warnings"],
        })
        checks["matched_within_10pct"] = {"target": "|mechscope / devinterp - 1| <= 0.10, same seeds and batches",
                                          "got": ratio, "pass": abs(ratio - 1) <= 0.10}
        checks["independent_within_10pct"] = {"target": "|mechscope / devinterp - 1| <= 0.10, mechscope's own "
                                              "seed and batch order", "got": ratio_ind, "pass": abs(ratio_ind - 1) <= 0.10}
        checks["healthy"] = {"target": "no warning from mechscope's diagnostics",
                             "got": "; ".join(figures["warnings_mechscope"]) or "none",
                             "pass": not figures["warnings_mechscope"]}
        print(f"{'':24}{'LLC':>10}{'se':>8}  per chain", file=sys.stderr)
        for label, r, se in ((f"devinterp {figures['devinterp']}", theirs, figures["se_devinterp"]), ("mechscope (matched)", ours, ours["se"]),
                             ("mechscope (independent)", independent, independent["se"])):
            print(f"{label:24}{r['llc']:>10.3f}{se:>8.3f}  " + " ".join(f"{v:.2f}" for v in r["per_chain"]),
                  file=sys.stderr)
        print(f"ratio mechscope / devinterp: matched {ratio:.4f}, independent {ratio_ind:.4f}; matched traces differ "
              f"by at most {trace_diff:.2e}", file=sys.stderr)
    except Exception as e:  # a check that could not run fails with the reason
        traceback.print_exc()
        for name in ("matched_within_10pct", "independent_within_10pct", "healthy"):
            checks.setdefault(name, {"target": "see the docstring", "got": f"{type(e).__name__}: {e}", "pass": False})
    figures["other_cpu_share"] = other_cpu_share(start)
    result = {"name": "llc_devinterp", "kind": "benchmark", "machine": machine(threads=1), "figures": figures,
              "checks": checks, "pass": bool(checks) and all(c["pass"] for c in checks.values())}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
