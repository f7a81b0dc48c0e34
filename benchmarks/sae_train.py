#!/usr/bin/env python
"""sae_train: how fast does a TopK sparse autoencoder train on CPU, and how good is it afterwards?

One TopK SAE per tool, d_in 512 -> 4096 latents, k 32, batch 4096, fp32, 2 threads, trained on the
same stream of activations for the same number of rows (default 2,097,152 = 512 steps):

    mechscope   mechscope.dictionaries.train (Adam 4e-4, lr decay over the last 20%, aux-k loss)
    saelens     SAELens's own SAETrainer.step on a TopKTrainingSAE (its defaults: Adam 3e-4,
                constant lr, aux loss 1.0, decoder-norm rescaling, input norm scaling estimated on
                the first batch and folded in at the end, as its fit() does)
    sparsify    EleutherAI sparsify's SparseCoder with the update of its Trainer (its defaults:
                SignSGD under schedule-free with lr 5e-3/sqrt(latents/2^14), FVU loss, b_dec set to
                the first batch's mean, unit-norm decoder, parallel gradient removed). Its Trainer
                itself needs a Hugging Face model and dataset, so the step is driven here.

Activations: structured, not noise. 16,384 random unit directions in 512 dimensions, about 40
active per row (probabilities decaying over a factor of 10), coefficients U(0, 1): superposition
with a known sparse structure. Every tool sees batch i drawn with seed i; held-out rows come from
another seed.

Timing: the three tools step in lockstep on the same batch, with a fourth entry, the dense
encoder product alone (x @ W_enc on mechscope's weights, the same shapes and threads, written
into a buffer kept from step to step):
the floor a TopK step cannot go below, measured beside it. The order of the four rotates by one
place each step, mechscope's turn included (mechscope runs its own training loop: the entries
before its turn step before the loop is handed the batch, the ones after it when the loop asks
for the next one). Drift in machine load hits all alike. Generating the batch is not timed.
Reported: median seconds per step (min, max), tokens per second = batch / median, mechscope's
speed as a share of the dense product's (median over steps of the product's time / mechscope's
step time, the same batch), the held-out FVU = sum ||x - x_hat||^2 / sum ||x - mean x||^2 after
training, the load average and the share of the CPUs other processes used during the run.

Targets: tokens/s >= 2 x SAELens's and >= sparsify's, at equal or lower held-out FVU (than both),
and a step at least half as fast as the dense encoder product alone (a step also selects the top
k, decodes, runs the backward through the selected entries only, and takes an Adam step).
The last line printed is the result line (benchmarks/README.md).
Usage:  .venv-sae/bin/python benchmarks/sae_train.py [--tokens N] [--quick]
        (bash benchmarks/setup_env.sh sae creates .venv-sae)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _machine import cpu_snapshot, machine, other_cpu_share, progress  # noqa: E402


class Stream:
    """Structured activations: sparse non-negative combinations of fixed random unit directions."""

    def __init__(self, d: int = 512, n_features: int = 16384, mean_active: float = 40.0, decay: float = 10.0,
                 seed: int = 1234):
        g = torch.Generator().manual_seed(seed)
        D = torch.randn(n_features, d, generator=g)
        self.directions = D / D.norm(dim=1, keepdim=True)
        w = decay ** (-torch.arange(n_features, dtype=torch.float64) / (n_features - 1))
        self.probs = (w / w.sum()).float()  # which feature an active slot picks
        self.mean_active = mean_active

    def batch(self, n: int, seed: int) -> torch.Tensor:
        """(n, d): each row has Poisson(mean_active) active slots, features drawn by probability."""
        g = torch.Generator().manual_seed(seed)
        counts = torch.poisson(torch.full((n,), self.mean_active), generator=g).long()
        idx = torch.multinomial(self.probs, int(counts.sum()), replacement=True, generator=g)
        coef = torch.rand(idx.numel(), generator=g)
        offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]])
        return F.embedding_bag(idx, self.directions, offsets, mode="sum", per_sample_weights=coef)


def fvu(x: torch.Tensor, recon: torch.Tensor) -> float:
    x, recon = x.double(), recon.double()
    return float((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


# --- the tools ------------------------------------------------------------------------------------

class SaeLens:
    name = "saelens"

    def __init__(self, a: argparse.Namespace, first: torch.Tensor):
        import sae_lens
        from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.config import SAETrainerConfig
        from sae_lens.training.sae_trainer import SAETrainer

        self.version = sae_lens.__version__
        torch.manual_seed(0)
        cfg = TopKTrainingSAEConfig(d_in=a.d_in, d_sae=a.d_sae, k=a.k, normalize_activations="expected_average_only_in",
                                    dtype="float32", device="cpu")
        self.sae = TopKTrainingSAE(cfg)
        # lr_end: what its runner config fills in (lr / 10); unused by the constant schedule
        tcfg = SAETrainerConfig(total_training_samples=a.steps * a.batch, train_batch_size_samples=a.batch,
                                n_batches_for_norm_estimate=1, lr_end=3e-5)
        self.trainer = SAETrainer(tcfg, self.sae, data_provider=iter(()))
        # what fit() does before its loop, on the first batch (mechscope estimates its scale on it too)
        self.trainer.activation_scaler.estimate_scaling_factor(a.d_in, iter([first]), 1)
        self.settings = {"lr": tcfg.lr, "optimizer": "Adam", "aux_loss_coefficient": cfg.aux_loss_coefficient,
                         "rescale_acts_by_decoder_norm": cfg.rescale_acts_by_decoder_norm}

    def step(self, x: torch.Tensor) -> None:
        self.trainer.step(x)
        self.trainer.n_training_steps += 1

    def finish(self) -> None:
        s = self.trainer.activation_scaler.scaling_factor
        if s is not None:  # as fit() does at its end
            self.sae.fold_activation_norm_scaling_factor(s)
            self.trainer.activation_scaler.scaling_factor = None

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        self.sae.eval()
        return self.sae.decode(self.sae.encode(x))


class Sparsify:
    name = "sparsify"

    def __init__(self, a: argparse.Namespace, first: torch.Tensor):
        import sparsify
        from schedulefree import ScheduleFreeWrapper
        from sparsify import SparseCoder, SparseCoderConfig
        from sparsify.sign_sgd import SignSGD

        self.version = sparsify.__version__
        torch.manual_seed(0)
        self.sae = SparseCoder(a.d_in, SparseCoderConfig(num_latents=a.d_sae, k=a.k), device="cpu",
                               dtype=torch.float32)
        lr = 5e-3 / (a.d_sae / 2**14) ** 0.5  # its Trainer's default for the signum optimizer
        self.opt = ScheduleFreeWrapper(SignSGD([{"params": self.sae.parameters(), "lr": lr}]), momentum=0.95)
        self.opt.train()
        self.first = True
        self.settings = {"lr": lr, "optimizer": "SignSGD + schedule-free (momentum 0.95)", "auxk_alpha": 0.0}

    def step(self, x: torch.Tensor) -> None:
        if self.first:  # its Trainer's first step: b_dec at the mean
            self.sae.b_dec.data = x.mean(0).to(self.sae.dtype)
            self.first = False
        self.sae.set_decoder_norm_to_unit_norm()
        out = self.sae(x, dead_mask=None)  # auxk_alpha defaults to 0: no dead mask
        out.fvu.backward()
        self.sae.remove_gradient_parallel_to_decoder_directions()
        self.opt.step()
        self.opt.zero_grad()

    def finish(self) -> None:
        self.opt.eval()  # schedule-free: evaluate at the averaged weights, as its Trainer saves them
        self.sae.set_decoder_norm_to_unit_norm()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.sae(x).sae_out


# --- the run --------------------------------------------------------------------------------------

def run(a: argparse.Namespace) -> dict[str, Any]:
    import mechscope
    import mechscope.dictionaries as dl

    torch.set_num_threads(a.threads)
    stream = Stream(d=a.d_in)
    first = stream.batch(a.batch, seed=0)
    held = stream.batch(a.held_out, seed=10**9)
    anchors: list[Any] = []
    errors: dict[str, str] = {}
    for cls in (SaeLens, Sparsify):
        try:
            anchors.append(cls(a, first))
        except Exception as e:  # noqa: BLE001 - an anchor that cannot run is reported, not fatal
            errors[cls.name] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
    # seconds per step, by step index, per tool; "dense" is the encoder product alone
    times: dict[str, dict[int, float]] = {"mechscope": {}, "dense": {}, **{t.name: {} for t in anchors}}
    sae = dl.build("topk", d_in=a.d_in, d_sae=a.d_sae, k=a.k, seed=0)

    product = torch.empty(a.batch, a.d_sae)

    def dense_product(x: torch.Tensor) -> None:
        # the one large product of a TopK step, x @ W_enc, on mechscope's own weights, with the
        # run's threads, into a buffer kept from step to step (its fastest form): what a step
        # would cost if nothing else had to happen
        with torch.no_grad():
            torch.mm(x, sae.W_enc, out=product)

    steppers: dict[str, Callable[[torch.Tensor], None]] = {"dense": dense_product,
                                                          **{t.name: t.step for t in anchors}}
    names = ["mechscope", "dense", *(t.name for t in anchors)]

    def step_others(which: list[str], i: int, x: torch.Tensor) -> None:
        for name in which:
            t = time.perf_counter()
            steppers[name](x)
            times[name][i] = time.perf_counter() - t

    last: dict[str, Any] = {}

    def batches():
        # every tool steps on batch i before batch i + 1 is drawn; the order rotates by one place
        # each step, mechscope's turn included: the tools before it step before the batch is
        # yielded to mechscope's training loop, the tools after it once the loop asks for the
        # next batch (mechscope's step is the time in between)
        for i in range(a.steps):
            x = first if i == 0 else stream.batch(a.batch, seed=i)
            order = names[i % len(names):] + names[:i % len(names)]
            mine = order.index("mechscope")
            step_others(order[:mine], i, x)
            t = time.perf_counter()
            last.update(i=i, x=x, after=order[mine + 1:])
            yield (x,)
            times["mechscope"][i] = time.perf_counter() - t
            step_others(order[mine + 1:], i, x)
            last.clear()
            if i % max(1, a.steps // 20) == 0:
                progress(f"sae_train: step {i + 1}/{a.steps}: " + ", ".join(
                    f"{k} {statistics.median(v.values()):.3f} s" for k, v in times.items() if v))

    cfg = dl.TrainConfig(tokens=a.steps * a.batch, batch_size=a.batch)
    snap = cpu_snapshot()
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    dl.train(sae, batches(), cfg, progress=False)
    wall = time.perf_counter() - t0
    if last:  # the loop does not ask for a batch after its last one: the tools after mechscope's turn
        step_others(last["after"], last["i"], last["x"])
    others = other_cpu_share(snap)
    load_after = os.getloadavg()
    for tool in anchors:
        tool.finish()
    fig: dict[str, Any] = {"steps": a.steps, "tokens": a.steps * a.batch, "batch": a.batch, "d_in": a.d_in,
                           "d_sae": a.d_sae, "k": a.k, "threads": a.threads, "wall_seconds": wall,
                           "load_average_before": load_before[0], "load_average_after": load_after[0],
                           "other_processes_cpu_share": others, "versions": {"mechscope": mechscope.__version__}}
    recon = {"mechscope": lambda x: sae.eval()(x)}
    for tool in anchors:
        recon[tool.name] = tool.reconstruct
        fig["versions"][tool.name] = tool.version
        fig[f"{tool.name}_settings"] = tool.settings
    # the first step pays one-off costs (allocation, norm estimate); the last mechscope step is not timed
    steps = [i for i in range(1, a.steps) if all(i in times[n] for n in times)]
    for name, ts in times.items():
        vals = [ts[i] for i in steps] or list(ts.values())
        med = statistics.median(vals)
        fig[f"{name}_step_s"] = med
        fig[f"{name}_step_s_min"] = min(vals)
        fig[f"{name}_step_s_max"] = max(vals)
        fig[f"{name}_tok_per_s"] = a.batch / med
        if name in recon:
            with torch.no_grad():
                fig[f"{name}_held_out_fvu"] = fvu(held, recon[name](held))
    # training speed as a share of the dense encoder product's, step by step (the same batch)
    share = statistics.median(times["dense"][i] / times["mechscope"][i] for i in steps) if steps else None
    fig["mechscope_share_of_dense_product"] = share
    checks: dict[str, Any] = {}

    def check(name: str, target: str, tool: str, fn: Callable[[], tuple[Any, bool]]) -> None:
        if tool in errors:
            checks[name] = {"target": target, "got": f"{tool} could not run: {errors[tool]}", "pass": False}
            return
        got, ok = fn()
        checks[name] = {"target": target, "got": got, "pass": bool(ok)}

    ours, our_fvu = fig["mechscope_tok_per_s"], fig["mechscope_held_out_fvu"]
    checks["speed_vs_dense_product"] = {
        "target": ">= 0.5 (median over steps of the dense encoder product's time / mechscope's step time)",
        "got": round(share, 3) if share is not None else "not run: no step was timed by every tool",
        "pass": share is not None and share >= 0.5}
    check("speed_vs_saelens", ">= 2.0 x SAELens tokens/s", "saelens",
          lambda: (round(ours / fig["saelens_tok_per_s"], 3), ours >= 2 * fig["saelens_tok_per_s"]))
    check("speed_vs_sparsify", ">= 1.0 x sparsify tokens/s", "sparsify",
          lambda: (round(ours / fig["sparsify_tok_per_s"], 3), ours >= fig["sparsify_tok_per_s"]))
    check("fvu_vs_saelens", "held-out FVU <= SAELens's", "saelens",
          lambda: (f"{our_fvu:.4f} vs {fig['saelens_held_out_fvu']:.4f}", our_fvu <= fig["saelens_held_out_fvu"]))
    check("fvu_vs_sparsify", "held-out FVU <= sparsify's", "sparsify",
          lambda: (f"{our_fvu:.4f} vs {fig['sparsify_held_out_fvu']:.4f}", our_fvu <= fig["sparsify_held_out_fvu"]))
    if a.steps * a.batch < 2_000_000:
        checks["tokens"] = {"target": ">= 2,000,000 training tokens", "got": a.steps * a.batch, "pass": False}
    return {"name": "sae_train", "kind": "benchmark", "machine": machine(a.threads),
            "figures": fig, "checks": checks, "pass": all(c["pass"] for c in checks.values())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=512 * 4096, help="training rows per tool (default 2,097,152)")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--d-in", dest="d_in", type=int, default=512)
    p.add_argument("--d-sae", dest="d_sae", type=int, default=4096)
    p.add_argument("-k", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--held-out", dest="held_out", type=int, default=16384)
    p.add_argument("--quick", action="store_true", help="24 steps: a smoke test, fails the tokens check")
    a = p.parse_args()
    a.steps = 24 if a.quick else max(1, a.tokens // a.batch)
    print(json.dumps(run(a)))


if __name__ == "__main__":
    main()
