"""The `mechscope` command line: look inside real networks from the shell."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .cli_options import DeviceOpt

app = typer.Typer(
    help="mechscope: look inside neural networks, intervene on them, and measure what an "
         "explanation explains.\n\nMODEL is a name (smollm2-135m, minilm-l6) or a local Hugging Face "
         "directory. Nothing is downloaded.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console()

ModelArg = Annotated[str, typer.Argument(help="smollm2-135m, minilm-l6, or a local Hugging Face directory")]


def _load(name: str, device: Optional[str] = None):
    from .models.load import load

    with console.status(f"loading {name}"):
        return load(name, device=device)


@app.command()
def sites(model: ModelArg,
          grep: Annotated[Optional[str], typer.Option(help="only names containing this text")] = None,
          layer: Annotated[Optional[int], typer.Option(help="only this layer")] = None,
          device: DeviceOpt = None) -> None:
    """List the sites of MODEL with their TransformerLens-style and short names."""
    m = _load(model, device)
    t = Table("name", "short", "kind", "layer")
    for s in m.sites():
        if (grep and grep not in s.name and grep not in s.short) or (layer is not None and s.layer != layer):
            continue
        t.add_row(s.name, s.short, s.kind.value, "" if s.layer is None else str(s.layer))
    console.print(t)


@app.command()
def top(model: ModelArg, prompt: Annotated[str, typer.Argument(help="text to continue")],
        k: Annotated[int, typer.Option("-k", help="how many tokens")] = 10,
        bos: Annotated[bool, typer.Option(help="prepend the BOS token")] = False, device: DeviceOpt = None) -> None:
    """Show the top-k next tokens of a causal language model after PROMPT."""
    import torch

    m = _load(model, device)
    res = m.run(m.to_tokens(prompt, prepend_bos=bos))
    if res.logits is None:
        raise typer.BadParameter(f"{model} has no unembedding (it is an encoder); try `mechscope sites`")
    probs = torch.softmax(res.logits[0, -1].float(), -1)
    vals, idx = probs.topk(k)
    t = Table("rank", "token", "id", "probability", title=f"{model}: next token after {prompt!r}")
    for r, (p, i) in enumerate(zip(vals.tolist(), idx.tolist()), 1):
        t.add_row(str(r), repr(m.to_str_tokens([i])[0]), str(i), f"{p:.4f}")
    console.print(t)


@app.command()
def capture(model: ModelArg, prompt: Annotated[str, typer.Argument(help="input text")],
            site: Annotated[list[str], typer.Option("--site", "-s", help="site name (repeatable), e.g. blocks.3.attn.hook_pattern")],
            as_json: Annotated[bool, typer.Option("--json", help="print shapes and norms as JSON")] = False,
            device: DeviceOpt = None) -> None:
    """Run MODEL on PROMPT and summarise the activations at the given sites."""
    m = _load(model, device)
    res = m.run(m.to_tokens(prompt), capture=site)
    rows = {s.name: {"shape": list(t.shape), "norm": float(t.float().norm()), "mean": float(t.float().mean())}
            for s, t in res.cache.items()}
    if as_json:
        print(json.dumps(rows))
        return
    t = Table("site", "shape", "norm", "mean")
    for name, r in rows.items():
        t.add_row(name, str(tuple(r["shape"])), f"{r['norm']:.4g}", f"{r['mean']:.4g}")
    console.print(t)


@app.command()
def demo(out: Annotated[str, typer.Option(help="artifact directory (report.html is written there)")] = "out",
         quick: Annotated[bool, typer.Option(help="quick zoo variants, no SmolLM2 (under a minute)")] = False,
         smollm2: Annotated[Optional[bool], typer.Option(help="include SmolLM2-135M (default: when installed)")
                            ] = None,
         serve: Annotated[bool, typer.Option(help="serve the viewer on 127.0.0.1 afterwards")] = True,
         port: Annotated[int, typer.Option(help="the viewer's port")] = 8765,
         threads: Annotated[int, typer.Option(help="torch threads (1 is fastest on a busy shared CPU: more "
                                                   "threads spin against other jobs)")] = 1,
         fresh: Annotated[bool, typer.Option(help="recompute sections whose artifacts are already there")] = False,
         retrain: Annotated[bool, typer.Option(help="train the zoo networks here instead of using the copies "
                                                    "shipped in the package (tens of minutes)")] = False,
         device: DeviceOpt = None) -> None:
    """The main job: zoo induction and modular-addition models (shipped in the package, or trained here)
    and SmolLM2-135M, analysed end to end into out/ and out/report.html, then the viewer on 127.0.0.1."""
    from .demo import run_demo

    run_demo(out, quick=quick, smollm2=smollm2, serve=serve, port=port, threads=threads, console=console,
             fresh=fresh, retrain=retrain, device=device)


@app.command(hidden=True)
def ioi_console(prompt: Annotated[str, typer.Option(help="IOI prompt to study")] =
                "When Mary and John went to the store, John gave a drink to", device: DeviceOpt = None) -> None:
    """A console-only look inside SmolLM2-135M on one IOI prompt (the first demo)."""
    from .demo.smollm2_console import run_demo as console_demo

    console_demo(console, prompt, device=device)


@app.command()
def ioi(prompts: Annotated[int, typer.Option(help="IOI prompts (and name-swap counterfactuals)")] = 32,
        steps: Annotated[int, typer.Option(help="EAP-IG interpolation steps")] = 5,
        seed: Annotated[int, typer.Option(help="seed of the prompts, random circuits and resampling")] = 0,
        threads: Annotated[int, typer.Option(help="torch threads (1 is fastest on a busy shared CPU)")] = 1,
        device: DeviceOpt = None) -> None:
    """IOI on SmolLM2-135M: EAP-IG circuit, exact patching of its top heads, faithfulness curve,
    robustness table; ends with one JSON line."""
    from .studies.ioi import IOIConfig, main as ioi_main

    ioi_main(IOIConfig(n_prompts=prompts, steps=steps, seed=seed, threads=threads, device=device))


@app.command()
def heads(model: Annotated[str, typer.Argument(help="smollm2-135m, zoo:NAME, or a local Hugging Face directory")]
          = "smollm2-135m",
          n: Annotated[int, typer.Option(help="length of the repeated random segment")] = 20,
          batch: Annotated[int, typer.Option(help="probe sequences")] = 16,
          threshold: Annotated[float, typer.Option(help="score a head needs to be named for a role")] = 0.3,
          bos_threshold: Annotated[float, typer.Option(help="attention share on the first token that names a "
                                                             "resting head")] = 0.9,
          top: Annotated[int, typer.Option(help="heads listed (and ablated one by one) per role")] = 5,
          low: Annotated[int, typer.Option(help="random tokens are drawn from ids >= LOW")] = 1000,
          seed: Annotated[int, typer.Option(help="seed of the probe")] = 0,
          threads: Annotated[int, typer.Option(help="torch threads")] = 1, device: DeviceOpt = None) -> None:
    """Previous-token, duplicate-token, induction, copy-suppression and resting (BOS) heads with
    scores and a causal check each, and the logit lens on factual prompts; ends with one JSON line."""
    from .studies.heads import HeadStudyConfig, main as heads_main

    heads_main(HeadStudyConfig(model=model, n=n, batch=batch, threshold=threshold, bos_threshold=bos_threshold,
                               top=top, low=low, seed=seed, threads=threads, device=device), console)


@app.command()
def circuits(steps: Annotated[int, typer.Option(help="EAP-IG interpolation steps")] = 10,
             prompts: Annotated[int, typer.Option(help="prompts per network")] = 48,
             zoo: Annotated[bool, typer.Option(help="include the zoo induction model if trained")] = True,
             threads: Annotated[int, typer.Option(help="torch threads (1 is fastest on a busy shared CPU)")] = 1,
             device: DeviceOpt = None) -> None:
    """ROC AUC of EAP, EAP-IG, ACDC (and exact patching) against circuits known by construction;
    ends with one JSON line."""
    import torch

    from .studies.circuit_discovery import main as bench_main

    from .models.load import check_device

    check_device(device)  # a bad --device fails before the benchmark starts
    torch.set_num_threads(threads)
    bench_main(steps=steps, n_prompts=prompts, zoo="induction" if zoo else None, device=device)


@app.command()
def dynamics(run: Annotated[list[str], typer.Argument(help="zoo:NAME (a trained zoo run), or checkpoints in training "
                                                         "order: Hugging Face directories or .safetensors files")],
             as_json: Annotated[bool, typer.Option("--json", help="end with the JSON result line")] = False,
             out: Annotated[Optional[str], typer.Option(help="write dynamics.json and dynamics.html here")] = None,
             threads: Annotated[int, typer.Option(help="torch threads (1 is fastest on a busy shared CPU)")] = 1,
             workers: Annotated[Optional[int], typer.Option(
                 min=1, help="processes estimating the LLC, one torch thread each (default 2 on 2 or more "
                             "cores, else 1)")] = None,
             base: Annotated[Optional[str], typer.Option(help="Hugging Face directory giving the architecture of "
                                                              "bare .safetensors files")] = None,
             tokens: Annotated[Optional[str], typer.Option(help="held-out token ids: a .safetensors file with `ids` "
                                                                "(batch, pos) (zoo runs bring their own)")] = None,
             llc: Annotated[bool, typer.Option(help="estimate the local learning coefficient when "
                                                    "mechscope.landscape is installed")] = True,
             llc_components: Annotated[bool, typer.Option(help="per-component LLC series (SGLD moving one "
                                                               "component's weights) beside the whole model's")] = True,
             llc_per_head: Annotated[bool, typer.Option(help="per-component LLC of every attention head too")] = False,
             llc_draws: Annotated[Optional[int], typer.Option(help="LLC draws per chain (default: the dynamics "
                                                                   "default, see the README)")] = None,
             top: Annotated[int, typer.Option(help="components listed per boundary and phase")] = 5,
             seed: Annotated[int, typer.Option(help="seed of the permutations and the token subset")] = 0,
             device: DeviceOpt = None) -> None:
    """Phase changes across training checkpoints, found without naming a behaviour: measures of every
    checkpoint, change points against a permutation null, phases and the components that moved."""
    from .dynamics.study import DynamicsConfig, main as dynamics_main

    dynamics_main(DynamicsConfig(sources=run, base=base, tokens=tokens, llc=llc, llc_components=llc_components,
                                 llc_per_head=llc_per_head, llc_draws=llc_draws, top=top, threads=threads,
                                 workers=workers, seed=seed, out=out, device=device), console, as_json=as_json)


@app.command()
def view(directory: Annotated[str, typer.Argument(help="artifact directory (manifest.json)")] = "out",
         host: Annotated[str, typer.Option(help="address to bind; 127.0.0.1 keeps it on this machine")] = "127.0.0.1",
         port: Annotated[int, typer.Option(help="port to listen on")] = 8765,
         allow_host: Annotated[Optional[list[str]], typer.Option(
             "--allow-host", help="another name clients use to reach the viewer (repeatable); requests "
                                  "addressed to other names are refused (DNS rebinding)")] = None) -> None:
    """Serve the local web viewer of an artifact directory (read-only; needs fastapi and uvicorn)."""
    from .artifacts import read_artifacts
    from .viewer import serve
    from .viewer.app import WILDCARD_HOSTS, host_names

    read_artifacts(directory)  # a missing or mismatched directory fails here with a clear message
    try:
        host_names(allow_host or ())
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--allow-host") from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/yellow] serving on {host}: other machines can reach the viewer")
        if host in WILDCARD_HOSTS and not allow_host:
            console.print("[yellow]warning:[/yellow] only requests addressed to this machine's loopback names "
                          "are answered; add --allow-host NAME for each name other machines use")
    console.print(f"mechscope viewer of {directory} on http://{host}:{port}/  (Ctrl-C stops it)")
    serve(directory, host=host, port=port, allowed_hosts=allow_host or ())


@app.command()
def report(directory: Annotated[str, typer.Argument(help="artifact directory (manifest.json)")] = "out",
           output: Annotated[Optional[str], typer.Option("-o", "--output",
                                                         help="HTML file to write (default DIR/report.html)")] = None
           ) -> None:
    """Write one self-contained HTML report (CSS, JS and data inline) of an artifact directory."""
    from .report import write_report

    path = write_report(directory, output)
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


from .cli_audit import audit as audit_command, audit_bench  # noqa: E402  (sub-commands live in their own modules)
from .cli_dict import dict_app  # noqa: E402
from .cli_diff import diff as diff_command, diff_bench  # noqa: E402
from .cli_features import features_app  # noqa: E402
from .cli_graph import graph as graph_command  # noqa: E402
from .cli_zoo import replicate, zoo_app  # noqa: E402
from .cli_explain import explain_all  # noqa: E402
from .cli_vis import vis as vis_command  # noqa: E402

app.add_typer(zoo_app, name="zoo")
app.add_typer(dict_app, name="dict")
app.add_typer(features_app, name="features")
app.command()(replicate)
app.command(name="diff")(diff_command)
app.command(name="graph")(graph_command)
app.command(name="diff-bench")(diff_bench)
app.command(name="explain-all")(explain_all)
app.command(name="vis")(vis_command)
app.command(name="audit")(audit_command)
app.command(name="audit-bench", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(audit_bench)


def main() -> None:
    """Entry point: mechscope's own errors print as one clear line and exit with status 2."""
    from .core.errors import MechscopeError

    try:
        app()
    except MechscopeError as e:
        console.print(f"[bold red]error:[/bold red] {e}", highlight=False)
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    main()
