"""`mechscope features ...`: dashboards and executable explanations of a dictionary's latents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

features_app = typer.Typer(help="Feature dashboards and explanations, stored in DuckDB.", no_args_is_help=True)
console = Console()


@features_app.command("explain")
def explain_cmd(
    model: Annotated[str, typer.Argument(help="smollm2-135m, zoo:NAME, or a local Hugging Face directory")],
    dictionary: Annotated[Path, typer.Argument(help="a dictionary directory (SAELens layout: cfg.json + weights)")],
    out: Annotated[Path, typer.Option(help="the DuckDB feature store (created or updated)")] = Path(
        "out/features.duckdb"),
    corpus: Annotated[str, typer.Option(help="held-out documents of this corpus: textlm, shakespeare, "
                                             "python-docs")] = "textlm",
    docs: Annotated[int, typer.Option(help="windows of held-out text")] = 256,
    seq_len: Annotated[int, typer.Option(help="tokens per window")] = 128,
    causal_limit: Annotated[Optional[int], typer.Option(help="score causally only the N most active live "
                                                             "latents (default: every live latent)")] = None,
    grammar: Annotated[str, typer.Option(help="clauses: a few rules with least-squares values, reading tokens, "
                                              "context and the latents on the previous token; rule: one rule and "
                                              "its mean value; select: per latent the one rule or clauses, "
                                              "whichever predicts best on folds of the fitting half")] = "rule",
    select_by: Annotated[str, typer.Option(help="with --grammar select: judge the candidates on folds of the fitting "
                                                "half by the model's loss with each substituted (loss) or by "
                                                "squared error (error)")] = "loss",
    select_docs: Annotated[int, typer.Option(help="with --grammar select --select-by loss: judged windows per fold "
                                                  "of the fitting half")] = 8,
    baseline: Annotated[bool, typer.Option(help="also score the one-rule search, in the same causal runs")] = False,
    causal_docs: Annotated[Optional[int], typer.Option(help="score causally on the first N held-out windows "
                                                            "only (default: all of them)")] = None,
    skip_first: Annotated[bool, typer.Option(help="read 0 at each window's first position (attention sink)")
                          ] = True,
    lm_url: Annotated[Optional[str], typer.Option(help="also ask a language model: an OpenAI-compatible base URL "
                                                       "(e.g. http://127.0.0.1:8000/v1); off by default")] = None,
    lm_model: Annotated[str, typer.Option(help="the language model's name at --lm-url")] = "default",
    lm_key_env: Annotated[str, typer.Option(help="environment variable holding the API key")] = "OPENAI_API_KEY",
    threads: Annotated[int, typer.Option(help="torch threads")] = 2,
    device: Annotated[Optional[str], typer.Option(help="where the model and the dictionary run: cpu, cuda, "
                                                  "cuda:N, mps (default: the loader's)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="end with one JSON line of the figures")] = False,
) -> None:
    """Dashboards for every latent of DICTIONARY on held-out text, an executable explanation per live
    latent scored by held-out correlation and causal substitution; prints three example pages."""
    import torch

    from . import dictionaries as dl
    from .features.lm_explainer import LMExplainer
    from .models.load import load
    from .studies.feature_study import feature_study
    from .zoo import datasets

    from .features.pipeline import GRAMMARS
    if grammar not in GRAMMARS:
        raise typer.BadParameter(f"--grammar must be one of {', '.join(GRAMMARS)}; got {grammar!r}")
    if baseline and grammar == "rule":
        raise typer.BadParameter("--baseline scores the one-rule search beside the clauses; give --grammar clauses "
                                 "or select (with --grammar rule the one rule is the explanation already)")
    torch.set_num_threads(threads)
    m = load(model, device=device)
    if getattr(m, "tokenizer", None) is None:
        raise typer.BadParameter(f"{model} has no tokenizer; explanations need text")
    d = dl.load(dictionary)
    if device is not None:
        d = d.to(device)
    ids = datasets.windows(m.tokenizer, docs, seq_len, corpus, "test")
    lm = LMExplainer(lm_url, lm_model, api_key_env=lm_key_env) if lm_url else None
    figures = feature_study(m, d, ids, out, dataset=f"{corpus} held-out, {docs}x{seq_len} tokens",
                            causal_limit=causal_limit, skip_first=skip_first, lm=lm,
                            causal_docs=causal_docs, grammar=grammar, baseline=baseline, select_by=select_by,
                            select_docs=select_docs)
    t = Table(title=f"{figures['set']} on {figures['dataset']}")
    for k in ("latents", "live", "corr_at_least_0.7", "share_corr_0.7", "median_heldout_corr", "causal_scored",
              "median_loss_recovered_vs_mean", "quartiles_loss_recovered_vs_mean", "size_median", "chosen",
              "baseline", "seconds"):
        v = figures[k]
        t.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v))
    console.print(t)
    for p in figures["pages"]:
        console.rule(f"latent {p['feature']} ({p['why']})")
        console.print(f"explanation: {p['explanation']}  held-out corr {p['heldout_corr']:.3f}  "
                      f"precision {p['precision']:.2f} recall {p['recall']:.2f}  loss recovered vs mean "
                      f"{p['loss_recovered_vs_mean']}", markup=False)
        console.print(f"density {p['density']:.4f}, max {p['max_act']:.2f}; promotes {p['promotes']}; suppresses "
                      f"{p['suppresses']}", markup=False)
        for e in p["top_examples"]:
            console.print("  " + e.replace("\n", "\\n"), markup=False)
    if as_json:
        print(json.dumps({"name": "feature_study", "kind": "study", "figures": figures}, default=str))
