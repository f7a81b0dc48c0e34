"""Command-line verbs for the zoo: `mechscope zoo train|list|export` and `mechscope replicate`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

zoo_app = typer.Typer(help="Reference networks trained here, with their checkpoints.", no_args_is_help=True,
                      add_completion=False, pretty_exceptions_show_locals=False)
console = Console()


@zoo_app.command("train")
def train(name: Annotated[str, typer.Argument(help="zoo name, e.g. modadd, tms, induction (see `zoo list`)")],
          quick: Annotated[bool, typer.Option("--quick", help="the variant that trains within a minute")] = False,
          seed: Annotated[Optional[int], typer.Option(help="seed (the run is named NAME-seedN)")] = None,
          threads: Annotated[Optional[int], typer.Option(help="torch threads (resume with the same number "
                                                         "for bit-identical results)")] = None) -> None:
    """Train a zoo network, or resume it where a killed run stopped."""
    import time

    import torch

    from . import zoo

    if threads:
        torch.set_num_threads(threads)
    t = time.monotonic()
    run = zoo.train(name, quick=quick, seed=seed)
    last = run.metrics()[-1] if run.metrics() else {}
    console.print(f"[bold]{run.path.name}[/] trained ({time.monotonic() - t:.1f} s this session): {run.path}")
    console.print("  ".join(f"{k} {v:.4g}" for k, v in last.items() if isinstance(v, float)))


@zoo_app.command("list")
def list_() -> None:
    """Every zoo network, whether it is trained, and where it lives."""
    from . import zoo

    t = Table("name", "steps", "status", "about")
    shipped = set(zoo.shipped.names())
    for name in zoo.names():
        run = zoo.open_run(name)
        status = "trained" if run.done else ("partial" if run.config_path.is_file() else "-")
        if name in shipped:
            status += " (shipped)" if status != "-" else "shipped"
        sp = zoo.spec(name)
        t.add_row(name, str(sp.hp["steps"]), status, sp.recipe.summary)
    console.print(t)
    console.print(f"cache: {zoo.zoo_dir()}")


@zoo_app.command("export")
def export(name: Annotated[str, typer.Argument(help="zoo name of a finished run in the cache, e.g. induction")],
           to: Annotated[Optional[str], typer.Option(help="directory to write into (default: the package's "
                                                     "mechscope/zoo/shipped)")] = None) -> None:
    """Ship a finished run in the package: NAME.safetensors (final weights, the run's config and metrics,
    their digest) and its SHA-256 in manifest.json. Train it first: `mechscope zoo train NAME --threads 1`."""
    from pathlib import Path

    from . import zoo

    directory = Path(to) if to else zoo.shipped.SHIPPED_DIR
    entry = zoo.shipped.export(zoo.open_run(name), name, zoo.spec(name).config(), directory)
    console.print(f"[bold]{name}[/] -> {directory / entry['file']} ({entry['bytes'] / 1e6:.2f} MB, "
                  f"sha256 {entry['sha256']})")


def replicate(name: Annotated[str, typer.Argument(help="tms, grokking, induction-heads or sae-universality")],
              quick: Annotated[bool, typer.Option("--quick", help="smaller runs (within 5 minutes); "
                                                  "says which targets it loosens")] = False,
              as_json: Annotated[bool, typer.Option(
                  "--json", help="end with one JSON result line (benchmarks/README.md)")] = False,
              threads: Annotated[Optional[int], typer.Option(help="torch threads for training and analysis "
                                                             "(default: torch's, one per core)")] = None
              ) -> None:
    """Reproduce a published result on zoo networks: target vs ours vs pass."""
    import torch

    from .replications import replicate as run_replication

    if threads:
        torch.set_num_threads(threads)

    rep = run_replication(name, quick)
    t = Table("check", "target", "ours", "pass", title=f"replicate {name}" + (" --quick" if quick else ""))
    for c in rep.checks:
        t.add_row(c.name, c.target, str(c.got), "[green]pass[/]" if c.passed else "[red]FAIL[/]")
    console.print(t)
    for note in rep.loosened:
        console.print(f"[yellow]--quick loosens:[/] {note}")
    if as_json:
        print(rep.json_line())
    if not rep.passed:
        raise typer.Exit(1)
