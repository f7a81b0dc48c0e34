#!/usr/bin/env python
"""featvis_lucent: feature visualisation by optimisation, mechscope against Lucent (torch-lucent 0.1.8).

The zoo's trained fmnist-cnn (its weights read from the zoo's safetensors into two copies of the plain
torch module, one for each tool), channels of relu2 (its 64 channels, every 8th), images of
1 x 28 x 28 in [0, 1], the same number of Adam steps at Lucent's learning rate (0.05), one torch
thread, the same seeds. Each tool runs its own loop: Lucent's `render_vis` (its Fourier image with
sigmoid, its transforms through kornia, `preprocess=False` because the network takes [0, 1] pixels,
`fixed_image_size=28` so it does not upsample to 224), and `mechscope.vision.visualize` (Fourier image,
its own transforms). Two settings:

    recipe   mechscope's `standard_transforms` at 28 pixels (Lucid's robustness recipe, its jitters twice
             Lucid's proportions), in each tool's own transforms: pad 2 (grey), jitter 2, scale 0.9..1.1,
             rotate -10..10 degrees, jitter 1
             (Lucent's jitter(d) shifts by 0..d-1 pixels, so it gets jitter(3) and jitter(2))
    plain    no transforms

Activation: one function, the channel's mean of relu(conv2(pool1(relu(conv1(x))))) computed by hand
on a third copy of the network, applied to each tool's final image. Time: wall time of the whole call
(setup, every step, the final image), the two tools back to back for each (setting, channel, seed),
in alternating order. Reported: median activations and times, the medians of the paired ratios
ours / Lucent, and how often ours reached at least Lucent's activation.

Targets (set before measuring): for each setting, median paired activation ratio >= 1.0 and median
paired time ratio <= 1.0; mechscope's own reported activation equals the common measurement (1e-5).
The last line printed is the result line (benchmarks/README.md).

Usage:  bash benchmarks/setup_env.sh lucent
        .venv-lucent/bin/python benchmarks/featvis_lucent.py [--steps N] [--seeds S] [--quick]
        (needs the trained zoo network: mechscope zoo train fmnist-cnn)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _machine import cpu_snapshot, other_cpu_share, progress, result_line  # noqa: E402
from _machine import main as _main  # noqa: E402

NAME = "featvis_lucent"
SCALES = [1 + (i - 5) / 50 for i in range(11)]
ANGLES = [*range(-10, 11), *[0] * 5]


def _networks(n: int):
    """n copies of the zoo's fmnist-cnn as plain FashionCNN modules, from its safetensors weights."""
    import mechscope as ms
    from mechscope.zoo.recipes.fmnist_cnn import FashionCNN

    state = {k: v.clone() for k, v in ms.load("zoo:fmnist-cnn").module.state_dict().items()}
    nets = []
    for _ in range(n):
        net = FashionCNN()
        net.load_state_dict(state)
        nets.append(net.eval())
    return nets


def _activation(net, images: torch.Tensor, c: int) -> float:
    """The common measure: channel c of relu2, averaged over positions, computed by hand."""
    with torch.no_grad():
        x = net.pool1(torch.relu(net.conv1(images)))
        return float(torch.relu(net.conv2(x))[:, c].mean())


def _lucent(net, c: int, steps: int, seed: int, setting: str) -> torch.Tensor:
    from lucent.optvis import objectives, param, render, transform

    torch.manual_seed(seed)
    np.random.seed(seed)
    tr = []
    if setting == "recipe":
        tr = [transform.pad(2, mode="constant", constant_value=0.5), transform.jitter(3),
              transform.random_scale(SCALES), transform.random_rotate(ANGLES), transform.jitter(2)]
    out = render.render_vis(net, objectives.channel("relu2", c), param_f=lambda: param.image(28, channels=1),
                            transforms=tr, thresholds=(steps,), preprocess=False, progress=False,
                            show_image=False, fixed_image_size=28)
    return torch.from_numpy(out[-1]).permute(0, 3, 1, 2).float()  # (1, 28, 28, 1) -> (1, 1, 28, 28)


def _ours(net, c: int, steps: int, seed: int, setting: str):
    from mechscope.vision import ImageSpec, visualize
    from mechscope.vision.transforms import standard_transforms

    spec = ImageSpec(1, 28, 28)
    tr = standard_transforms(spec) if setting == "recipe" else None
    return visualize(net, f"relu2:{c}", spec, steps=steps, lr=0.05, transforms=tr, seed=seed, progress=False)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    try:
        import importlib

        import lucent
        importlib.import_module("lucent.optvis.render")  # its render loop needs torchvision and kornia
    except Exception as e:  # noqa: BLE001
        return result_line(NAME, {}, {"runs": {"target": "Lucent imports", "got": f"could not run: {e}",
                                               "pass": False}}, threads=1)
    try:
        lucent_net, our_net, judge = _networks(3)
    except Exception as e:  # noqa: BLE001
        return result_line(NAME, {}, {"runs": {"target": "the zoo's fmnist-cnn loads",
                                               "got": f"could not run: {type(e).__name__}: {e}",
                                               "pass": False}}, threads=1)
    channels = list(range(0, 64, args.every))
    snap = cpu_snapshot()
    rows = {s: [] for s in args.settings}
    worst_agreement = 0.0
    k = 0
    for setting in args.settings:
        for c in channels:
            for seed in range(args.seeds):
                order = ("ours", "lucent") if k % 2 == 0 else ("lucent", "ours")
                k += 1
                got = {}
                for who in order:
                    t0 = time.perf_counter()
                    if who == "ours":
                        r = _ours(our_net, c, args.steps, seed, setting)
                        images = r.images
                    else:
                        images = _lucent(lucent_net, c, args.steps, seed, setting)
                    got[who] = (time.perf_counter() - t0, _activation(judge, images, c))
                    if who == "ours":
                        worst_agreement = max(worst_agreement, abs(float(r.activation[0]) - got[who][1]))
                rows[setting].append({"channel": c, "seed": seed, "ours_s": got["ours"][0],
                                      "lucent_s": got["lucent"][0], "ours_act": got["ours"][1],
                                      "lucent_act": got["lucent"][1]})
                progress(f"{NAME}: {setting} relu2:{c} seed {seed}: activation ours {got['ours'][1]:.4f} "
                         f"lucent {got['lucent'][1]:.4f}; time ours {got['ours'][0]:.2f} s lucent "
                         f"{got['lucent'][0]:.2f} s")
    others = other_cpu_share(snap)
    fig: dict = {"steps": args.steps, "seeds": args.seeds, "channels": channels, "image": [1, 28, 28],
                 "threads": 1, "lucent_version": lucent.__version__, "torch": torch.__version__,
                 "other_processes_cpu_share": others, "our_reported_vs_common_activation_max_diff": worst_agreement}
    checks = {}
    for setting, rs in rows.items():
        act_ratio = [r["ours_act"] / r["lucent_act"] if r["lucent_act"] > 0 else
                     (1.0 if r["ours_act"] >= r["lucent_act"] else 0.0) for r in rs]
        time_ratio = [r["ours_s"] / r["lucent_s"] for r in rs]
        for who in ("ours", "lucent"):
            ts = [r[f"{who}_s"] for r in rs]
            fig[f"{setting}_{who}_s"] = statistics.median(ts)
            fig[f"{setting}_{who}_s_min"], fig[f"{setting}_{who}_s_max"] = min(ts), max(ts)
            fig[f"{setting}_{who}_activation"] = statistics.median(r[f"{who}_act"] for r in rs)
        fig[f"{setting}_activation_ratio"] = statistics.median(act_ratio)
        fig[f"{setting}_activation_ratio_min"] = min(act_ratio)
        fig[f"{setting}_time_ratio"] = statistics.median(time_ratio)
        fig[f"{setting}_ours_at_least_lucent"] = f"{sum(r['ours_act'] >= r['lucent_act'] for r in rs)}/{len(rs)}"
        fig[f"{setting}_runs"] = rs
        checks[f"{setting}_activation"] = {
            "target": ">= 1.0 (median over channels and seeds of ours / Lucent, the channel's mean on the final image)",
            "got": fig[f"{setting}_activation_ratio"], "pass": fig[f"{setting}_activation_ratio"] >= 1.0}
        checks[f"{setting}_time"] = {
            "target": "<= 1.0 (median over channels and seeds of ours / Lucent wall time, same steps)",
            "got": fig[f"{setting}_time_ratio"], "pass": fig[f"{setting}_time_ratio"] <= 1.0}
    checks["reported_activation"] = {"target": "<= 1e-5 (mechscope's reported activation vs the common measure)",
                                     "got": worst_agreement, "pass": worst_agreement <= 1e-5}
    return result_line(NAME, fig, checks, threads=1)


def _settings(a, ap) -> None:
    a.settings = [s for s in a.settings.split(",") if s]
    bad = [s for s in a.settings if s not in ("recipe", "plain")]
    if bad:
        ap.error(f"unknown settings {bad}: recipe, plain")


def main() -> None:
    """Parse the options and print the result line."""
    _main(run, __doc__, {"--steps": dict(type=int, default=256),
                         "--seeds": dict(type=int, default=3, help="repeats (seeds) per channel and setting"),
                         "--every": dict(type=int, default=8, help="every N-th channel of relu2's 64"),
                         "--settings": dict(default="recipe,plain")},
          quick={"steps": 64, "seeds": 1, "every": 16}, quick_help="64 steps, 1 seed, 4 channels (a smoke test)",
          prepare=_settings)


if __name__ == "__main__":
    main()
