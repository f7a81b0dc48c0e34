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
                                                         "for bit-identical results)")] = None,
          device: Annotated[Optional[str], typer.Option(help="where the network trains: cpu, cuda, cuda:N, mps "
                                                        "(default cpu; batches are drawn on the CPU either way)")] = None
          ) -> None:
    """Train a zoo network, or resume it where a killed run stopped."""
    import time

    import torch

    from . import zoo
    from .models.load import check_device

    check_device(device)  # a bad --device fails before any training
    if threads:
        torch.set_num_threads(threads)
    t = time.monotonic()
    run = zoo.train(name, quick=quick, seed=seed, device=device)
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
              quick: Annotated[bool, typer.Option("--quick", help="smaller runs (minutes a seed); "
                                                  "says which targets it loosens")] = False,
              seeds: Annotated[Optional[str], typer.Option(
                  "--seeds", help="run several seeds, each training its own networks, and report each check's pass "
                  "rate: a count (3 = seeds 0, 1, 2), a list (0,1,7) or a range (0-4); a check passes only when "
                  "it passes on every seed")] = None,
              as_json: Annotated[bool, typer.Option("--json", help="end with one JSON result line (benchmarks/README.md)")] = False,
              threads: Annotated[Optional[int], typer.Option(help="torch threads for training and analysis "
                                                             "(default: torch's, one per core)")] = None,
              device: Annotated[Optional[str], typer.Option(help="where zoo networks not trained yet are trained: "
                                                            "cpu, cuda, cuda:N, mps (default cpu; the measurements "
                                                            "read the saved weights)")] = None
              ) -> None:
    """Reproduce a published result on zoo networks: target vs ours vs pass (per seed with --seeds)."""
    import torch

    from .models.load import check_device
    from .replications import parse_seeds, replicate_seeds
    from .replications import replicate as run_replication

    check_device(device)  # a bad --device fails before any training
    if threads:
        torch.set_num_threads(threads)
    title = f"replicate {name}" + (" --quick" if quick else "")
    if seeds is None:
        rep = run_replication(name, quick, device=device)
        t = Table("check", "target", "ours", "pass", title=title)
        for c in rep.checks:
            t.add_row(c.name, c.target, str(c.got), "[green]pass[/]" if c.passed else "[red]FAIL[/]")
    else:
        try:
            seed_list = parse_seeds(seeds)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--seeds") from None
        rep = replicate_seeds(name, seed_list, quick, device=device)
        t = Table("check", "target", *(f"seed {s}" for s in rep.seeds), "pass rate", title=f"{title} --seeds {seeds}")
        for n in rep.check_names():
            cells = []
            for s in rep.seeds:
                c = rep.check(s, n)
                cells.append("-" if c is None else ("[green]pass[/] " if c.passed else "[red]FAIL[/] ") + str(c.got))
            rate = rep.pass_rate(n)
            t.add_row(n, rep.targets(n), *cells,
                      f"[{'green' if rate == 1 else 'red'}]{len(rep.passed_seeds(n))}/{len(rep.seeds)}[/]")
    console.print(t)
    first = rep if seeds is None else next(iter(rep.runs.values()))
    for note in first.loosened:
        console.print(f"[yellow]--quick loosens:[/] {note}")
    for seed, run in ([(None, rep)] if seeds is None else list(rep.runs.items())):
        for note in run.reported:
            console.print(f"[cyan]reported, no target{'' if seed is None else f' (seed {seed})'}:[/] {note}")
    if seeds is not None:
        console.print(f"{'[green]replicated' if rep.passed else '[red]not replicated'}[/] over seeds "
                      f"{', '.join(map(str, rep.seeds))} ({rep.RULE})")
    if as_json:
        print(rep.json_line())
    if not rep.passed:
        raise typer.Exit(1)
