"""`mechscope diff A B` and `mechscope diff-bench`: what changed between two networks of one architecture."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .cli_options import DeviceOpt

console = Console(stderr=True)


def diff(a: Annotated[str, typer.Argument(help="network A: zoo:NAME, a zoo run directory, a Hugging Face directory "
                                               "or a name mechscope.load knows")],
         b: Annotated[str, typer.Argument(help="network B, the same architecture as A")],
         corpus: Annotated[str, typer.Option(help="held-out text: textlm, python-docs, shakespeare, or a text file")
                           ] = "textlm",
         control: Annotated[Optional[str], typer.Option(help="a control network C (A trained further on its own "
                                                             "data): thresholds come from diffing A and C")] = None,
         windows: Annotated[int, typer.Option(help="windows of held-out text")] = 256,
         seq_len: Annotated[int, typer.Option(help="tokens per window (at most the model's context)")] = 64,
         top: Annotated[int, typer.Option(help="findings shown")] = 15,
         crosscoder: Annotated[bool, typer.Option(help="also train a crosscoder on both models' activations and "
                                                       "list its most B-leaning latents with latent scaling")] = False,
         as_json: Annotated[bool, typer.Option("--json", help="print the diff as one JSON line")] = False,
         out: Annotated[Optional[str], typer.Option(help="directory to write diff.json and diff.html into "
                                                         "(written whole, or not at all)")] = None,
         threads: Annotated[int, typer.Option(help="torch threads")] = 1, device: DeviceOpt = None) -> None:
    """What changed from A to B: weights per component, behaviour (KL) on held-out text, activation
    shifts read by the logit lens and tested by steering; findings ranked, measured against a control."""
    import torch

    from .diff.report import MARGIN, write_out
    from .diff.study import diff as run_diff

    torch.set_num_threads(threads)
    ctl = None
    if control is not None:
        ctl = run_diff(a, control, corpus=corpus, n_windows=windows, seq_len=seq_len, names=(a, control),
                       device=device)
    res = run_diff(a, b, corpus=corpus, n_windows=windows, seq_len=seq_len, control=ctl, names=(a, b),
                   crosscoder=crosscoder, device=device)
    if out is not None:
        path = write_out(out, {"diff.json": res.to_json(), "diff.html": res.to_html()})
        console.print(f"wrote {path}/diff.json and {path}/diff.html")
    if as_json:
        print(json.dumps(res.to_json(), default=str))
        return
    from .core.progress import echo

    echo(f"diff {a} → {b}: {len(res.findings)} findings, "
         + (f"{len(res.above)} above threshold ({MARGIN} x the control {control})" if ctl else
            "no control given, so no thresholds (--control C calibrates them)"))
    for i, f in enumerate(res.findings[:top], 1):
        ci = f" [{f.score.ci[0]:.3g}, {f.score.ci[1]:.3g}]" if f.score.ci else ""
        vs = "" if f.threshold is None else (f"; threshold {f.threshold:.3g}, {f.strength:.2f}x"
                                             + ("  ABOVE" if f.above else ""))
        echo(f"{i:3d}. [{f.kind}] {f.title}")
        echo(f"     {f.score.metric} = {f.score.value:.4g}{ci}{vs}")
    if res.crosscoder is not None:
        cc = res._crosscoder_json()
        echo(f"crosscoder ({cc['activation']}) at {cc['site']}: FVU {cc['fvu']:.3g}; live latents A-only {cc['shares']['A-only']:.0%}, "
             f"shared {cc['shares']['shared']:.0%}, B-only {cc['shares']['B-only']:.0%}")
        for x in cc["b_leaning"]:
            echo(f"  latent {x['latent']}: relative norm {x['relative_norm']:.2f}, ν {x['nu']:.2f}, fires on "
                 f"{x['fires_on'][:5]}, B's lens {x['lens_top'][:5]}")
    echo("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in res.seconds.items()))


def diff_bench(as_json: Annotated[bool, typer.Option("--json", help="print only the result line on stdout")] = False,
               quick: Annotated[bool, typer.Option(help="A = textlm-quick, 200-step fine-tunes, 256 windows (else "
                                                        "A = textlm, 200 steps, 512 windows)")] = False,
               base: Annotated[Optional[str], typer.Option(help="zoo text model A (textlm or textlm-quick)")] = None,
               steps: Annotated[Optional[int], typer.Option(help="fine-tune steps")] = None,
               windows: Annotated[Optional[int], typer.Option(help="held-out windows of 64 tokens")] = None,
               model: Annotated[Optional[str], typer.Option(help="a Hugging Face causal LM instead of the zoo model "
                                                                "(smollm2-135m): fine-tuned briefly on the Python docs, "
                                                                "and on Shakespeare with two seeds (thresholds, control); "
                                                                "default 50 steps, 32 windows")] = None,
               threads: Annotated[int, typer.Option(help="torch threads")] = 1, device: DeviceOpt = None) -> None:
    """Diff a zoo text model against its public fine-tunes (Python docs only, a planted rule, a
    control): the change must be named in the top 3 findings, and the control must show nothing
    above threshold. Ends with one JSON line. With --model, a real language model's brief fine-tunes."""
    import torch

    from .diff.bench import json_line, run_bench, run_hf_bench

    from .models.load import check_device

    check_device(device)  # a bad --device fails before any fine-tune is trained
    torch.set_num_threads(threads)
    if model is not None:
        if quick or base is not None:
            raise typer.BadParameter("--model replaces the zoo model: give it without --quick and --base")
        res = run_hf_bench(model, steps=steps or 50, windows=windows or 32, device=device)
    else:
        res = run_bench(quick=quick, base=base, steps=steps, windows=windows, device=device)
    if not as_json:
        for name, rows in res["top_findings"].items():
            t = Table("#", "kind", "finding", "score", "threshold", "above", title=f"{name}: top findings")
            for i, r in enumerate(rows, 1):
                t.add_row(str(i), r["kind"], r["title"], f"{r['score']:.4g}",
                          "—" if r["threshold"] is None else f"{r['threshold']:.4g}", "yes" if r["above"] else "")
            console.print(t)
        for k, c in res["checks"].items():
            console.print(f"{'pass' if c['pass'] else 'FAIL'}  {k}: {c['got']} (target {c['target']})")
    print(json_line(res))
