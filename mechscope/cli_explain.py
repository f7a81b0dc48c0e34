"""`mechscope explain-all NAME`: a zoo network replaced by code, measured under several ablations."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def explain_all(name: Annotated[str, typer.Argument(help="zoo name: modadd, modadd-frac05, tms, ...")],
                as_json: Annotated[bool, typer.Option("--json", help="print the whole result as JSON before "
                                                      "the result line")] = False,
                n_boot: Annotated[int, typer.Option(help="bootstrap resamples for each interval")] = 1000) -> None:
    """Each component alone and jointly, the explanation's size and a robustness table across ablations."""
    import torch

    from .studies.explain_all import explain_all as run, print_tables, result_line

    torch.set_num_threads(1)
    out = run(name, n_boot=n_boot)
    if as_json:
        print(json.dumps(out))
    else:
        print_tables(out)
    print(json.dumps(result_line(out)))
