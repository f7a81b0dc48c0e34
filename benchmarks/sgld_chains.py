#!/usr/bin/env python
"""sgld_chains: SGLD chains one after another against all chains in one vmapped pass, same process.

`mechscope.landscape.sample` runs its chains in a loop (one forward and backward per chain and
step) or, with `vectorize=True`, as one `torch.func.vmap` of `torch.func.grad` over the chains'
stacked weights. Both draw the same noise and minibatches per chain, so their losses agree to float
rounding; this measures which is faster, on two networks at two ends:

- `induction`: the zoo's two-layer attention-only transformer (`zoo:induction`, 44k parameters) at
  a training checkpoint (default step 900) on the dynamics' held-out set (512 sequences of 64
  tokens, the loss at the targets), with the dynamics' LLC settings (`DEFAULT_LLC`: the whole model
  with 4 chains, each component of `landscape.components` with 2, minibatches of 8 sequences);
- `mlp`: a 8-32-32-1 tanh regression network (1,377 parameters) on 2,048 examples, 4 chains,
  minibatches of 32: a step of small tensors, mostly per-operation overhead;
- `mlp_16_chains`, `induction_16_chains`: the MLP, and the induction transformer's whole-model
  estimate, with 16 chains (where the vmapped pass has more chains to share its overhead).

Each round runs both ways on the same settings (the order alternating between rounds), timed in
CPU seconds of this process (the machine is shared: CPU time, and the paired ratio per round).
Figures: milliseconds per chain-step each way (median over rounds, min, max), the per-round ratio
loop / vectorised (median), the largest difference of the two ways' loss traces.

Checks: `same_losses` (the two ways' losses within 1e-4 everywhere) and, per case,
`<case>_faster` (vectorised faster than the loop: ratio > 1).

Usage:  python benchmarks/sgld_chains.py [--step N] [--draws N] [--rounds N] [--quick]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from _machine import cpu_snapshot, main, other_cpu_share, progress, result_line  # noqa: E402


def induction_jobs(step: int, draws: int, chains: int | None = None):
    """The dynamics' LLC jobs at one checkpoint of zoo:induction: (label, loss, module, data, config, params);
    with `chains`, the whole model alone with that many chains."""
    from mechscope.dynamics.data import from_zoo_run
    from mechscope.dynamics.measures import DEFAULT_LLC, _llc_loss
    from mechscope.dynamics.series import CheckpointSeries
    from mechscope.landscape import SGLDConfig, components

    series = CheckpointSeries.from_zoo("induction")
    model = series.load(series.steps.index(step))
    held = from_zoo_run(series.zoo_run)["heldout"]
    data = (held.ids, held.targets)
    loss = lambda b: _llc_loss(model, b)  # noqa: E731
    jobs = [("model", loss, model.module, data, SGLDConfig(**{**DEFAULT_LLC.model, "draws": draws}), None)]
    if chains is not None:
        return [("model", loss, model.module, data,
                 SGLDConfig(**{**DEFAULT_LLC.model, "draws": draws, "chains": chains}), None)]
    for name, comp in components(model).items():
        jobs.append((name, loss, model.module, data, SGLDConfig(**{**DEFAULT_LLC.components, "draws": draws}), comp))
    return jobs


def mlp_jobs(draws: int, chains: int = 4):
    from mechscope.landscape import SGLDConfig, mse_loss

    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    x = torch.randn(2048, 8, generator=g)
    y = torch.sin(x @ torch.randn(8, 1, generator=g))
    return [("mlp", lambda b: mse_loss(net, b), net, (x, y),
             SGLDConfig(chains=chains, draws=draws, batch_size=32, step_size=1e-4), None)]


def measure(jobs, rounds: int) -> dict:
    """Both ways on every job, `rounds` times: ms per chain-step each way, the paired ratios, the largest
    difference of the loss traces."""
    from mechscope.landscape import sample, sgld

    def no_loop(*args, **kwargs):  # a vectorised run that fell back to the loop would time the loop twice
        raise RuntimeError("the vectorised pass fell back to the chain-after-chain loop")

    steps = sum(cfg.chains * cfg.steps for *_, cfg, _ in jobs)
    times: dict[bool, list[float]] = {False: [], True: []}
    diff = 0.0
    for r in range(rounds):
        traces: dict[bool, list[torch.Tensor]] = {}
        for vectorize in ((False, True) if r % 2 == 0 else (True, False)):
            loop = sgld._sample_sequential
            if vectorize:
                sgld._sample_sequential = no_loop
            try:
                t0 = time.process_time()
                traces[vectorize] = [sample(loss, module, data, cfg, params, progress=False,
                                            vectorize=vectorize).losses for _, loss, module, data, cfg, params in jobs]
            finally:
                sgld._sample_sequential = loop
            times[vectorize].append((time.process_time() - t0) / steps * 1e3)
        diff = max([diff] + [float((a - b).abs().max()) for a, b in zip(traces[False], traces[True])])
    ratios = [a / b for a, b in zip(times[False], times[True])]
    out = {"chain_steps": steps, "max_abs_loss_diff": diff, "ratio_loop_over_vectorized": median(ratios),
           "ratio_min": min(ratios), "ratio_max": max(ratios)}
    for vectorize, label in ((False, "loop"), (True, "vectorized")):
        out.update({f"{label}_ms_per_chain_step": median(times[vectorize]),
                    f"{label}_ms_per_chain_step_min": min(times[vectorize]),
                    f"{label}_ms_per_chain_step_max": max(times[vectorize])})
    return out


def run(a) -> dict:
    torch.set_num_threads(1)
    figures: dict = {"rounds": a.rounds, "draws": a.draws, "step": a.step}
    checks: dict = {}
    start = cpu_snapshot()
    networks = (("mlp", lambda: mlp_jobs(a.draws)), ("mlp_16_chains", lambda: mlp_jobs(a.draws, 16)),
                ("induction", lambda: induction_jobs(a.step, a.draws)),
                ("induction_16_chains", lambda: induction_jobs(a.step, a.draws, 16)))
    for name, make in networks:
        try:
            progress(f"sgld_chains: {name}, {a.rounds} rounds of {a.draws} draws, loop and vectorised")
            figures[name] = measure(make(), a.rounds)
            f = figures[name]
            progress(f"sgld_chains: {name}: loop {f['loop_ms_per_chain_step']:.3f} ms, vectorised "
                     f"{f['vectorized_ms_per_chain_step']:.3f} ms per chain-step (ratio "
                     f"{f['ratio_loop_over_vectorized']:.2f}); losses differ by {f['max_abs_loss_diff']:.2e}")
            checks[f"{name}_faster"] = {"target": "> 1 (loop / vectorised CPU time per chain-step, median of rounds)",
                                        "got": f["ratio_loop_over_vectorized"],
                                        "pass": f["ratio_loop_over_vectorized"] > 1}
        except Exception as e:  # a check that could not run fails with the reason
            import traceback

            traceback.print_exc()
            figures[name] = None
            checks[f"{name}_faster"] = {"target": "> 1", "got": f"{type(e).__name__}: {e}", "pass": False}
    diffs = [figures[k]["max_abs_loss_diff"] for k, _ in networks if figures.get(k)]
    checks["same_losses"] = {"target": "<= 1e-4 (largest |loop - vectorised| loss, every network)",
                             "got": max(diffs) if len(diffs) == len(networks) else "a network did not run",
                             "pass": len(diffs) == len(networks) and max(diffs) <= 1e-4}
    figures["other_cpu_share"] = other_cpu_share(start)
    return result_line("sgld_chains", figures, checks, threads=1)


if __name__ == "__main__":
    main(run, __doc__, {"--step": {"type": int, "default": 900, "help": "zoo:induction checkpoint (default 900)"},
                        "--draws": {"type": int, "default": 50, "help": "draws per chain and round (default 50)"},
                        "--rounds": {"type": int, "default": 3, "help": "rounds (default 3)"}},
         quick={"draws": 10, "rounds": 1}, quick_help="1 round of 10 draws: a smoke test")
