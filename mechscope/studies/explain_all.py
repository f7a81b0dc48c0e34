"""explain-all: a zoo network replaced by code as a whole, measured under several ablations.

`mechscope explain-all NAME` (NAME a zoo name: `modadd`, `modadd-frac05`, `tms`, ...):
1. the network's hypothesis, from the registry `HYPOTHESES` (zoo recipe -> function(model) ->
   Hypothesis), and its evaluation data from `EVALUATIONS` (recipe -> function(model, hypothesis) ->
   Evaluation: held-out inputs, labels, loss, figures);
2. `causal.scrub` under each ablation (mean, resample, zero): the joint loss recovered with its
   bootstrap interval, and per component its score alone and the share of the unexplained loss it
   holds;
3. the explanation's size (lines of code, numbers) per component and in total;
4. figures of the network's own (modadd: key frequencies, restricted and excluded loss as the
   grokking replication defines them; tms: per-instance loss recovered, worst instance;
   fmnist-cnn: only its first convolution is code, as per-channel polynomial detectors, and the
   share of the loss left unexplained is 1 - loss recovered);
5. one JSON result line with checks: >= 0.99 of the loss recovered under each ablation (tms: also
   for every instance).

Adding a network is one line in each registry (`induction`: the rules of
`circuits.induction_code`, scored on the next-token loss of the predictable part of the repeated
segment).
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..causal.scrub import ScrubResult, scrub
from ..circuits.induction_code import induction_hypothesis
from ..circuits.modadd_code import answer_logits, modadd_hypothesis
from ..circuits.modadd_layout import ModAddLayout
from ..circuits.conv_code import conv_hypothesis
from ..circuits.tms_code import tms_hypothesis
from ..core.errors import MechscopeError
from ..core.hypothesis import Hypothesis
from ..core.progress import note
from ..models import wrap

ABLATIONS = ("mean", "resample", "zero")
TARGET = 0.99


@dataclass
class Evaluation:
    """What a hypothesis is scored on: the model `scrub` runs, held-out inputs, labels and loss."""

    model: Any
    data: Any
    labels: Any = None
    loss: Callable[[Tensor, Any], Tensor] | None = None
    groups: list[str] | None = None
    dataset: str = "held-out"
    figures: dict[str, Any] = field(default_factory=dict)
    ablations: tuple[str, ...] = ABLATIONS  # the ablations that mean something for these components


def _recipe(model: Any) -> tuple[str, dict[str, Any]]:
    run = getattr(model, "zoo_run", None)
    if run is None:
        raise MechscopeError(f"{getattr(model, 'name', model)} is not a zoo network; explain-all takes zoo names")
    cfg = run.config()
    return cfg["recipe"], cfg


def _modadd_eval(model: Any, hyp: Hypothesis) -> Evaluation:
    from .. import zoo
    from ..replications.grokking import progress_losses

    _, cfg = _recipe(model)
    split = zoo.RECIPES["modadd"].data(cfg["hparams"], cfg["seed"])
    freqs = hyp.info["key_frequencies"]
    p = cfg["hparams"]["p"]
    logits, labels = answer_logits(model, ModAddLayout.transformer(p))
    train_idx = split.train_x[:, 0] * p + split.train_x[:, 1]
    losses = progress_losses(logits, labels, train_idx, p, freqs)
    return Evaluation(model, split.test_x, split.test_y, dataset=f"test split ({len(split.test_y)} held-out pairs)",
                      figures={"key_frequencies": freqs, **losses})


def _tms_eval(model: Any, hyp: Hypothesis) -> Evaluation:
    from .. import zoo
    from ..zoo.recipes.tms import BatchFirstTMS

    _, cfg = _recipe(model)
    data = zoo.RECIPES["tms"].data(cfg["hparams"], cfg["seed"])  # a fixed evaluation batch per group
    view = BatchFirstTMS(model.module)
    xs = {g: v.transpose(0, 1).contiguous() for g, v in data.items()}
    return Evaluation(wrap(view), xs, xs, loss=view.losses, groups=view.instance_names(list(xs)),
                      dataset="the recipe's evaluation batch (2048 inputs per group, seed 10000 + run seed)")


def _tms(model: Any) -> Hypothesis:
    from ..zoo.recipes.tms import BatchFirstTMS

    return tms_hypothesis(BatchFirstTMS(getattr(model, "module", model)))


def _fmnist_images(split: str, n: int) -> tuple[Tensor, Tensor]:
    from ..zoo.recipes.fmnist_cnn import as_input, fashion_mnist

    images, labels = fashion_mnist(split)
    pick = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:n]
    return as_input(images[pick]), labels[pick]


def _fmnist_conv1(model: Any) -> Hypothesis:
    """The first convolution only (the rest of the network stays as is), fitted on 2000 training images."""
    return conv_hypothesis(model, "conv1", _fmnist_images("train", 2000)[0], degree=2)


def _fmnist_eval(model: Any, hyp: Hypothesis) -> Evaluation:
    images, labels = _fmnist_images("test", 2000)
    return Evaluation(model, images, labels, dataset="2000 Fashion-MNIST test images (seed 0)",
                      figures={"fit_r2_train": hyp.info["fit_r2_train"], "channels": hyp.info["channels"]})


def repeat_loss(logits: Tensor, labels: tuple[Tensor, Tensor]) -> Tensor:
    """Per sequence: the mean next-token loss over the predictable part of the repeated segment."""
    ids, repeat = labels
    pred, target = logits[:, :-1].double(), ids[:, 1:]
    ce = F.cross_entropy(pred.flatten(0, 1), target.flatten(), reduction="none").view_as(target)
    m = repeat.to(ce.dtype)
    return (ce * m).sum(1) / m.sum(1).clamp_min(1)


def _induction_eval(model: Any, hyp: Hypothesis) -> Evaluation:
    from .. import zoo

    _, cfg = _recipe(model)
    batch = zoo.RECIPES[cfg["recipe"]].data(cfg["hparams"], cfg["seed"])  # the run's fixed evaluation batch
    keep = batch.repeat.any(1)
    ids, repeat = batch.ids[keep], batch.repeat[keep]
    # no zero ablation: one part is the final norm's divisor, and dividing by zero is no ablation
    return Evaluation(model, ids, (ids, repeat), loss=repeat_loss, ablations=("mean", "resample"),
                      dataset=f"the recipe's evaluation batch ({len(ids)} sequences with a repeat)")


HYPOTHESES: dict[str, Callable[[Any], Hypothesis]] = {
    "modadd": modadd_hypothesis,
    "tms": _tms,
    "fmnist-cnn": _fmnist_conv1,
    "induction": induction_hypothesis,
}
EVALUATIONS: dict[str, Callable[[Any, Hypothesis], Evaluation]] = {
    "modadd": _modadd_eval,
    "tms": _tms_eval,
    "fmnist-cnn": _fmnist_eval,
    "induction": _induction_eval,
}


def explain_all(name: str, *, ablations: tuple[str, ...] | None = None, n_boot: int = 1000,
                device: str | None = None) -> dict[str, Any]:
    """Every figure of the command (module docstring) as plain data, the network run on `device` (None: the
    CPU); `ablations` defaults to those the network's evaluation names (all three unless a component has no
    meaningful zero)."""
    import mechscope as ms

    t0 = time.monotonic()
    model = ms.load(name if name.startswith("zoo:") else f"zoo:{name}", device=device)
    recipe, _ = _recipe(model)
    if recipe not in HYPOTHESES or recipe not in EVALUATIONS:
        raise MechscopeError(f"no explanation registered for zoo recipe {recipe!r}; explain-all knows "
                             f"{', '.join(sorted(set(HYPOTHESES) & set(EVALUATIONS)))}")
    note(f"explain-all {name}: building the hypothesis")
    hyp = HYPOTHESES[recipe](model)
    ev = EVALUATIONS[recipe](model, hyp)
    results: dict[str, ScrubResult] = {}
    for abl in ablations or ev.ablations:
        note(f"explain-all {name}: scrubbing against {abl} ablation")
        results[abl] = scrub(ev.model, hyp, ev.data, abl, labels=ev.labels, loss=ev.loss, groups=ev.groups,
                             n_boot=n_boot, dataset=ev.dataset)
    return {"name": name, "recipe": recipe, "hypothesis": _plain(hyp.describe()), "dataset": ev.dataset,
            "figures": _plain(ev.figures), "results": {a: r.describe() for a, r in results.items()},
            "seconds": round(time.monotonic() - t0, 1)}


def _plain(x: Any) -> Any:
    """JSON-ready: tensors become their shape (large) or values (small)."""
    if isinstance(x, Tensor):
        return x.tolist() if x.numel() <= 64 else {"shape": list(x.shape)}
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def checks(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """>= 0.99 of the loss recovered under each ablation; for grouped losses, also in every group."""
    got: dict[str, dict[str, Any]] = {}
    for abl, r in out["results"].items():
        v = r["recovered"]["value"]
        got[f"recovered_{abl}"] = {"target": f">= {TARGET}", "got": round(v, 6), "pass": bool(v >= TARGET)}
        if r["groups"]:
            worst_name, worst = min(r["groups"].items(), key=lambda kv: kv[1]["value"])
            got[f"every_instance_{abl}"] = {"target": f">= {TARGET} in every instance",
                                            "got": f"worst {worst_name}: {worst['value']:.6f}",
                                            "pass": bool(worst["value"] >= TARGET)}
    return got


def result_line(out: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's result line for one run's output: figures, checks and overall pass."""
    c = checks(out)
    figures = {"lines": out["hypothesis"]["lines"], "numbers": out["hypothesis"]["numbers"],
               **{f"recovered_{a}": r["recovered"]["value"] for a, r in out["results"].items()},
               **{f"recovered_{a}_ci": r["recovered"]["ci"] for a, r in out["results"].items()},
               **{k: v for k, v in out["figures"].items() if not isinstance(v, dict)}}
    return {"name": f"explain-all {out['name']}", "kind": "benchmark",
            "machine": {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "gpu": None,
                        "python": platform.python_version()},
            "figures": figures, "checks": c, "pass": all(v["pass"] for v in c.values())}


def write_artifact(out: dict[str, Any], directory: str) -> Any:
    """explanations/<name>.json under the model `zoo:NAME` of an artifact directory (the report reads it)."""
    from ..artifacts import ArtifactWriter

    name = out["name"] if out["name"].startswith("zoo:") else f"zoo:{out['name']}"
    return ArtifactWriter(directory).model(name).explanation(
        "explain-all", out["hypothesis"], out["results"], dataset=out["dataset"], figures=out["figures"])


def print_tables(out: dict[str, Any], echo: Callable[[str], None] = print) -> None:
    """The component table, the joint numbers and the robustness table, as text."""
    hyp = out["hypothesis"]
    echo(f"{out['name']}: {hyp['name']} — {hyp['claim']}")
    echo(f"explanation size: {hyp['lines']} lines of code, {hyp['numbers']} numbers; scored on {out['dataset']}")
    first = next(iter(out["results"].values()))
    echo("\ncomponent                        kind   lines  numbers  " +
         "  ".join(f"alone vs {a:<8}" for a in out["results"]) + "  restoring it (mean): gain of gap, share of unexplained")
    for i, part in enumerate(hyp["parts"]):
        alone = []
        for r in out["results"].values():
            a = r["parts"][i]["alone"] if r["parts"] else None
            alone.append("-" if a is None else f"{a['value']:.6f}")
        share = first["parts"][i]["unexplained_share"] if first["parts"] else None
        gain = first["parts"][i]["restore_gain"] if first["parts"] else None
        echo(f"{part['component']:<32} {part['kind']:<6} {part['lines']:>5} {part['numbers']:>8}  " +
             "  ".join(f"{x:<17}" for x in alone) + f"  {'-' if gain is None else f'{gain:+.3g}'}, "
             f"{'-' if share is None else f'{share:.4f}'}")
    echo("\nrobustness: the whole hypothesis at once")
    for abl, r in out["results"].items():
        ci = r["recovered"]["ci"]
        ci_text = "" if ci is None else f" [{ci[0]:.6f}, {ci[1]:.6f}]"
        extra = ""
        if r["groups"]:
            worst_name, worst = min(r["groups"].items(), key=lambda kv: kv[1]["value"])
            extra = f"; worst instance {worst_name} {worst['value']:.6f}"
        echo(f"  vs {abl:<8} loss recovered {r['recovered']['value']:.6f}{ci_text} (clean {r['loss_clean']:.4g}, "
             f"code {r['loss_hypothesis']:.4g}, ablated {r['loss_ablated']:.4g}){extra}")
    if out["figures"]:
        echo("\n" + json.dumps({k: v for k, v in out["figures"].items()}))
