"""`mechscope explain-all NAME`: a zoo network replaced by code, measured under several ablations."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from .cli_options import DeviceOpt


def explain_all(name: Annotated[str, typer.Argument(help="zoo name: modadd, modadd-frac05, tms, ...")],
                as_json: Annotated[bool, typer.Option("--json", help="print the whole result as JSON before "
                                                      "the result line")] = False,
                n_boot: Annotated[int, typer.Option(help="bootstrap resamples for each interval")] = 1000,
                out: Annotated[Optional[str], typer.Option(help="artifact directory to write explanations/NAME.json "
                                                           "into (the report shows it)")] = None,
                device: DeviceOpt = None) -> None:
    """Each component alone and jointly, the explanation's size and a robustness table across ablations."""
    import torch

    from .studies.explain_all import explain_all as run, print_tables, result_line

    torch.set_num_threads(1)
    res = run(name, n_boot=n_boot, device=device)
    if out:
        from .studies.explain_all import write_artifact

        print(f"wrote {write_artifact(res, out)}")
    if as_json:
        print(json.dumps(res))
    else:
        print_tables(res)
    print(json.dumps(result_line(res)))
