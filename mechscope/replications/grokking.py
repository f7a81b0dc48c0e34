"""grokking: Nanda et al. (2023) on the zoo's modadd network, found without being told the frequencies.

Steps:
1. train (or reuse) `modadd` (train fraction 0.3, the paper's model and init; `--quick`:
   `modadd-frac05-long`, fraction 0.5, the zoo's default init, 3000 epochs);
2. from the metrics log: memorisation (train accuracy 100% while test accuracy < 20%) and the
   epoch test loss first falls below 0.01, against Nanda's train-fraction sweep;
3. on the final network: capture the neurons (`mlp.post.0` at "=") over all p² inputs, take their
   2-D Fourier transform over (a, b), and assign each neuron the frequency whose terms explain the
   largest share of its variance; frequencies holding >= 10 neurons are the *key frequencies*;
4. the embedding's Fourier power per frequency;
5. progress measures: restricted loss (logits projected onto cos/sin(w_k(a+b)) of the key
   frequencies, plus each output's mean) and excluded loss (those components removed, train set),
   and the epoch each of restricted and test loss first falls below 0.1, on every checkpoint.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.progress import progress_bar
from ..core.site import Kind, Site
from . import Check, Replication

# Nanda et al.'s public train-fraction sweep: epochs until grokking (test loss < 0.01)
REFERENCE_EPOCHS = {0.3: 8258, 0.5: 1109}


def fourier_basis(p: int) -> Tensor:
    """(p, p) orthonormal rows: constant, then cos and sin of frequency k = 1..(p-1)/2 in pairs."""
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.full((p,), 1 / math.sqrt(p), dtype=torch.float64)]
    for k in range(1, (p - 1) // 2 + 1):
        rows.append(torch.cos(2 * math.pi * k * x / p) * math.sqrt(2 / p))
        rows.append(torch.sin(2 * math.pi * k * x / p) * math.sqrt(2 / p))
    return torch.stack(rows)


def _inputs(p: int) -> tuple[Tensor, Tensor]:
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    return torch.stack([a, b, torch.full_like(a, p)], 1), (a + b) % p  # (p*p, 3), (p*p,)


def neuron_frequencies(acts: Tensor, p: int) -> tuple[Tensor, Tensor]:
    """acts (p, p, d_mlp) over (a, b). Returns, per neuron, the best frequency (1-based) and the
    share of its variance (constant term excluded) that frequency's terms explain."""
    Fb = fourier_basis(p)
    coef = torch.einsum("ia,jb,abn->ijn", Fb, Fb, acts.double())  # (p, p, d_mlp), 2-D transform
    power = coef ** 2
    power[0, 0] = 0  # the mean is not variance
    total = power.sum((0, 1))  # (d_mlp,)
    shares = []
    for k in range(1, (p - 1) // 2 + 1):
        idx = torch.tensor([0, 2 * k - 1, 2 * k])
        shares.append(power[idx][:, idx].sum((0, 1)))  # every term made only of frequency k
    share = torch.stack(shares) / total.clamp_min(1e-30)  # (freq, d_mlp)
    best = share.max(0)
    return best.indices + 1, torch.where(total > 0, best.values, torch.zeros_like(best.values))


def embedding_power(W_E: Tensor, p: int) -> Tensor:
    """Fourier power of the number embeddings (p, d_model) per frequency k = 1..(p-1)/2, as a share
    of the total (constant included)."""
    coef = fourier_basis(p) @ W_E[:p].detach().double()  # (p, d_model)
    per_row = (coef ** 2).sum(-1)
    pairs = per_row[1:].view(-1, 2).sum(-1)  # (freq,)
    return pairs / per_row.sum()


def key_directions(p: int, freqs: list[int]) -> Tensor:
    """(2 * len(freqs), p*p) orthonormal functions cos/sin(w_k (a + b)) over the input grid."""
    a = torch.arange(p, dtype=torch.float64).repeat_interleave(p)
    b = torch.arange(p, dtype=torch.float64).repeat(p)
    rows = []
    for k in freqs:
        w = 2 * math.pi * k / p
        for f in (torch.cos, torch.sin):
            v = f(w * (a + b))
            rows.append(v / v.norm())
    return torch.stack(rows)


def progress_losses(logits: Tensor, labels: Tensor, train_idx: Tensor, p: int, freqs: list[int]) -> dict[str, float]:
    """Full, restricted and excluded loss from the answer logits (p*p, p) over the whole grid."""
    L = logits.double()
    D = key_directions(p, freqs)  # (2K, p*p)
    key_part = D.T @ (D @ L)  # projection of each output's logits onto the key directions
    restricted = L.mean(0, keepdim=True) + key_part
    excluded = L - key_part
    return {"full_loss": float(F.cross_entropy(L, labels)),
            "restricted_loss": float(F.cross_entropy(restricted, labels)),
            "excluded_loss": float(F.cross_entropy(excluded[train_idx], labels[train_idx]))}


def _answer_logits(module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return module(x, last_only=True)[:, -1]


def _first(rows: list[dict], key: str, below: float) -> int | None:
    return next((r["step"] for r in rows if key in r and r[key] < below), None)


def analyse(name: str) -> dict[str, Any]:
    """Every figure of the replication, from the trained zoo network `name`."""
    from .. import zoo

    run = zoo.open_run(name)
    hp = run.config()["hparams"]
    p = hp["p"]
    model = zoo.load_zoo(name)
    x, y = _inputs(p)
    split = zoo.RECIPES["modadd"].data(hp, run.config()["seed"])
    is_train = torch.zeros(p * p, dtype=torch.bool)
    is_train[split.train_x[:, 0] * p + split.train_x[:, 1]] = True
    train_idx = is_train.nonzero().squeeze(1)

    # 2. the training log
    rows = run.metrics()
    memorised = [r["step"] for r in rows if r.get("train_acc") == 1.0 and r.get("test_acc", 1) < 0.2]
    train_perfect = next((r["step"] for r in rows if r.get("train_acc") == 1.0), None)
    test_perfect = next((r["step"] for r in rows if r.get("test_acc") == 1.0), None)
    grok = _first(rows, "test_loss", 0.01)

    # 3. neurons, through mechscope's run: mlp.post at "=" over every (a, b)
    site = Site(Kind.MLP_POST, 0)
    acts = model.run(x, capture=[site]).cache[site][:, -1].view(p, p, -1)  # (p, p, d_mlp)
    best, share = neuron_frequencies(acts, p)
    explained = share > 0.85
    counts = torch.bincount(best[explained], minlength=(p - 1) // 2 + 1)
    key = [int(k) for k in (counts >= 10).nonzero().squeeze(1)]

    # 4. the embedding
    power = embedding_power(model.weights().W_E, p)
    top6 = float(power.sort(descending=True).values[:6].sum())

    # 5. progress measures on the checkpoints (key frequencies of the final network)
    curve = []
    for step in progress_bar(run.checkpoint_steps(), desc=f"grokking: progress measures of {name}",
                             unit="checkpoint"):
        module = zoo.build_module(run, step)
        logits = _answer_logits(module, x)
        m = progress_losses(logits, y, train_idx, p, key) if key else {}
        test_idx = (~is_train).nonzero().squeeze(1)
        m["test_loss"] = float(F.cross_entropy(logits[test_idx].double(), y[test_idx]))
        curve.append({"step": step, **m})
    final = curve[-1]
    restricted_drop = _first(curve, "restricted_loss", 0.1)
    test_drop = _first(curve, "test_loss", 0.1)
    return {
        "p": p, "frac_train": hp["frac_train"], "epochs": hp["steps"],
        "memorised_at": memorised[0] if memorised else None,
        "train_acc_1_at": train_perfect, "test_acc_1_at": test_perfect,
        "test_loss_below_0.01_at": grok, "reference_epoch": REFERENCE_EPOCHS.get(hp["frac_train"]),
        "neurons": int(acts.shape[-1]), "neurons_explained": int(explained.sum()),
        "dead_neurons": int((acts.abs().amax((0, 1)) == 0).sum()),
        "frac_neurons_explained": float(explained.float().mean()),
        "key_frequencies": key, "neurons_per_key_frequency": [int(counts[k]) for k in key],
        "embedding_top6_frequencies": [int(i) + 1 for i in power.sort(descending=True).indices[:6]],
        "embedding_top6_power": top6,
        "final_full_loss": final.get("full_loss"), "final_restricted_loss": final.get("restricted_loss"),
        "final_excluded_loss": final.get("excluded_loss"),
        "restricted_below_0.1_at": restricted_drop, "test_below_0.1_at": test_drop,
        "checkpoints": len(curve), "curve": curve,
    }


def replicate(quick: bool = False, seed: int = 0, device: str | None = None) -> Replication:
    """Train (or reuse) the modadd network for `seed` (`modadd-frac05-long` when `quick`), measure it
    with `analyse` and check the targets.

    Example: `replicate(quick=True)`, or `mechscope replicate grokking --quick`.
    """
    from .. import zoo

    name = zoo.spec("modadd-frac05-long" if quick else "modadd", seed=seed).name
    zoo.train(name, device=device)
    return build(analyse(name), quick, seed)


def build(f: dict[str, Any], quick: bool, seed: int = 0) -> Replication:
    """The checks, figures and loosened targets from `analyse`'s figures."""
    hp_steps = f["epochs"]
    ref = f["reference_epoch"]
    grok, mem = f["test_loss_below_0.01_at"], f["memorised_at"]
    nk = len(f["key_frequencies"])
    r_full, r_res = f["final_full_loss"], f["final_restricted_loss"]
    rd, td = f["restricted_below_0.1_at"], f["test_below_0.1_at"]
    # The MLP keeps cleaning up for thousands of epochs after the test loss falls, at a pace that
    # differs by seed (frac-0.5 runs, neurons single-frequency at 1500 / 3000 epochs: seeds 0 and 1
    # 0.79 / 0.86 and 0.74 / 0.86; seeds 2 and 7, which grok last, 0.31 / 0.60 and 0.44 / 0.70).
    need_neurons = 0.75 if quick else 0.85
    if quick:  # at train fraction 0.5 the test accuracy is already ~80% when train accuracy reaches 100%
        tr1, te1 = f["train_acc_1_at"], f["test_acc_1_at"]
        mem_check = Check("memorises_first", "quick: train acc reaches 100% before test acc does",
                          f"{tr1} vs {te1}", tr1 is not None and (te1 is None or tr1 < te1),
                          "loosened from: train acc 100% while test acc < 20%")
    else:
        mem_check = Check("memorises_first", "train acc 100% while test acc < 20%", mem, mem is not None,
                          "first logged epoch with both")
    checks = [
        mem_check,
        Check("groks_in_time", f"test loss < 0.01 by epoch {2.5 * ref:.0f} (2.5 x {ref})", grok,
              grok is not None and grok <= 2.5 * ref),
        Check("neurons_single_frequency", f">= {need_neurons} of neurons with > 0.85 variance from one frequency",
              round(f["frac_neurons_explained"], 4), f["frac_neurons_explained"] >= need_neurons,
              "dead neurons count as unexplained"),
        Check("key_frequencies", "3-7 frequencies each holding >= 10 neurons",
              f"{nk}: {f['key_frequencies']}", 3 <= nk <= 7),
        Check("embedding_top6_power", "> 0.80 of the embedding's Fourier power", round(f["embedding_top6_power"], 4),
              f["embedding_top6_power"] > 0.8),
        Check("restricted_loss", "<= 10 x full loss at the end",
              None if r_res is None else f"{r_res:.3g} vs {r_full:.3g}",
              r_res is not None and r_res <= 10 * r_full),
        Check("excluded_loss", "> 1 on the train set at the end", f["final_excluded_loss"],
              f["final_excluded_loss"] is not None and f["final_excluded_loss"] > 1),
        Check("restricted_before_test", "restricted loss < 0.1 at an earlier checkpoint than test loss",
              f"{rd} vs {td}", rd is not None and td is not None and rd < td),
    ]
    figures = {k: v for k, v in f.items() if k != "curve"}
    loosened = (["memorises_first: 'train acc 100% while test acc < 20%' becomes 'train acc reaches 100% "
                 "before test acc does' (train fraction 0.5 generalises almost as soon as it fits the "
                 "training set)",
                 "the run: train fraction 0.5 (Nanda's sweep: groks at 1109 epochs) instead of 0.3, "
                 f"{hp_steps} epochs; the grokking deadline is 2.5 x 1109",
                 "the network: the zoo's default init with biases everywhere instead of the paper's init "
                 "with MLP biases alone (it groks and cleans up sooner: at 1500 epochs 0.80 of neurons "
                 "single-frequency against 0.29)",
                 "neurons_single_frequency: >= 0.75 of neurons instead of >= 0.85 (the clean-up after "
                 f"grokking is cut short at {hp_steps} epochs); every other target unchanged"]
                if quick else [])
    return Replication("grokking", checks, figures, quick, loosened, seed)
