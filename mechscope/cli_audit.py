"""`mechscope audit MODEL` and `mechscope audit-bench`: look for planted or hidden behaviour in a network."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.console import Console

from .cli_options import DeviceOpt

console = Console(stderr=True)


def audit(model: Annotated[str, typer.Argument(help="the network: zoo:NAME, a zoo run directory, a Hugging Face "
                                                    "directory (config.json + model.safetensors) or a name "
                                                    "mechscope.load knows")],
          reference: Annotated[Optional[str], typer.Option(help="the unmodified base network, same architecture "
                                                                "(enables KL and weight-difference methods)")] = None,
          corpus: Annotated[str, typer.Option(help="held-out text: textlm, python-docs, shakespeare, or a text "
                                                   "file")] = "textlm",
          budget: Annotated[float, typer.Option(help="time budget in minutes")] = 5.0,
          windows: Annotated[int, typer.Option(help="windows of corpus text")] = 48,
          seq_len: Annotated[int, typer.Option(help="tokens per window (at most the model's context)")] = 64,
          calibration: Annotated[Optional[str], typer.Option(help="a calibration JSON (default: the cached one, "
                                                                  "built on first use)")] = None,
          calibrate: Annotated[bool, typer.Option("--calibrate", help="rebuild the default calibration from clean "
                                                                      "models first")] = False,
          seed: Annotated[int, typer.Option(help="seed of every random choice")] = 0,
          as_json: Annotated[bool, typer.Option("--json", help="print the report as one JSON line")] = False,
          out: Annotated[Optional[str], typer.Option(help="directory to write audit.json and audit.html into")] = None,
          threads: Annotated[int, typer.Option(help="torch threads")] = 1, device: DeviceOpt = None) -> None:
    """Rank suspects -- component, trigger, behaviour change, calibrated confidence -- or say
    "nothing found" when nothing passes the thresholds calibrated on clean models."""
    import torch

    from .audit.calibrate import build
    from .audit.report import write
    from .audit.run import audit as run_audit
    from .audit.suspect import describe
    from .core.progress import echo

    torch.set_num_threads(threads)
    if calibrate:
        from .audit.calibrate import BASES, base_for
        from .audit.inputs import load

        build(base=base_for(load(model)) or BASES[0])
    rep = run_audit(model, reference=reference, corpus=corpus, budget_minutes=budget, calibration=calibration,
                    seed=seed, n_windows=windows, seq_len=seq_len, device=device)
    if out is not None:
        path = write(rep, out)
        console.print(f"wrote {path}/audit.json and {path}/audit.html")
    if as_json:
        print(json.dumps(rep.to_json(), default=str))
        return
    echo(f"audit {model}" + (f" against {reference}" if reference else "") + f": {rep.verdict}")
    if rep.calibration.get("warning"):
        echo(f"warning: {rep.calibration['warning']}")
    for i, s in enumerate(rep.suspects, 1):
        echo(f"{i:3d}. confidence {s.confidence:.2f}  {describe(s)}  ({', '.join(s.methods)}; "
             f"{s.stat} {s.score:.3g} vs threshold {s.threshold:.3g}; confirmed {s.confirmed})")
    for k, v in rep.skipped.items():
        echo(f"skipped {k}: {v}")
    echo("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in rep.timings.items()))


def audit_bench(ctx: typer.Context) -> None:
    """Run the audit benchmark (planted cases and clean ones); options are the benchmark's own."""
    from .core.errors import MechscopeError

    try:
        from .audit.bench import main as bench_main
    except ImportError as e:
        raise MechscopeError(f"the audit benchmark (mechscope/audit/bench.py) is missing from this installation "
                             f"({e}); install a mechscope that includes it, or run `mechscope audit` on one model") from e
    bench_main(list(ctx.args))
