"""`mechscope graph MODEL PROMPT`: the attribution graph of a prompt, as JSON for the viewer."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .cli_options import DeviceOpt

console = Console(stderr=True)


def _target_id(model, text: str, vocab: int) -> int:
    """A target given as `id:N` or as text that is one token of the model's vocabulary."""
    if text.startswith("id:"):
        try:
            i = int(text[3:])
        except ValueError:
            raise typer.BadParameter(f"--target {text!r}: after id: give a token id (an integer)") from None
        if not 0 <= i < vocab:
            raise typer.BadParameter(f"--target {text!r} is outside the vocabulary (ids 0..{vocab - 1})")
        return i
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise typer.BadParameter(f"{model.name} has no tokenizer: give the target as id:N")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    unk = getattr(tok, "unk_token_id", None)
    if len(ids) == 1 and unk is not None and ids[0] == unk and text != tok.unk_token:
        raise typer.BadParameter(f"--target {text!r} is not in the vocabulary (it reads as the unknown token); "
                                 "give one token of the vocabulary, or id:N")
    if len(ids) != 1:
        pieces = [tok.decode([i]) for i in ids]
        raise typer.BadParameter(f"--target {text!r} is not one token of the vocabulary (it reads as {pieces}); "
                                 "give one token, or id:N")
    if not 0 <= ids[0] < vocab:
        raise typer.BadParameter(f"--target {text!r} is token {ids[0]}, outside the model's {vocab} logits")
    return int(ids[0])


def _feature_sets(items: list[str]) -> dict[int, str]:
    """layer -> feature set, from --feature-set LAYER=SET options."""
    sets: dict[int, str] = {}
    for item in items:
        layer, eq, set_id = item.partition("=")
        if not eq or not layer.strip().isdigit() or not set_id.strip():
            raise typer.BadParameter(f"--feature-set {item!r}: give LAYER=SET, e.g. 1=tc.1")
        if int(layer) in sets:
            raise typer.BadParameter(f"--feature-set names layer {int(layer)} twice")
        sets[int(layer)] = set_id.strip()
    return sets


def graph(
    model: Annotated[str, typer.Argument(help="smollm2-135m, zoo:NAME or a local Hugging Face directory")],
    prompt: Annotated[str, typer.Argument(help="the text whose next token the graph explains")],
    target: Annotated[Optional[str], typer.Option(help="the logit to explain: one token of text, or id:N "
                                                   "(default: the top logits up to 95% of the probability)")] = None,
    transcoders: Annotated[Optional[Path], typer.Option(help="a transcoder set (mechscope dict transcoders) or a directory of per-layer transcoders (layers "
                                                        "without one are error nodes)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="directory for graph.json")] = None,
    artifacts: Annotated[Optional[Path], typer.Option(help="also save the graph in this artifact directory "
                                                      "(for `mechscope view`), under MODEL")] = None,
    name: Annotated[str, typer.Option(help="the graph's name in --artifacts")] = "graph",
    store: Annotated[Optional[Path], typer.Option(help="a FeatureStore with the transcoder latents' dashboards, "
                                                  "registered with MODEL in --artifacts")] = None,
    feature_set: Annotated[Optional[list[str]], typer.Option(help="LAYER=SET: the feature set of a layer's latents "
                                                             "in the model's store (repeat per layer)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the graph JSON on stdout")] = False,
    bos: Annotated[bool, typer.Option(help="prepend the BOS token (with --transcoders it has no latents: its MLP "
                                          "outputs stay whole, error nodes, as transcoders are not trained on BOS)")] = False,
    node_threshold: Annotated[float, typer.Option(help="share of the latents' influence the kept latents carry")] = 0.8,
    edge_threshold: Annotated[float, typer.Option(help="share of the edges' influence the kept edges carry")] = 0.98,
    memory_gb: Annotated[float, typer.Option(help="refuse graphs whose process would need more GB (the model, transcoders, runtime and the graph's matrices)")] = 4.0,
    batch: Annotated[int, typer.Option(help="graph rows per backward pass")] = 64,
    threads: Annotated[Optional[int], typer.Option(help="torch threads")] = None,
    device: DeviceOpt = None,
) -> None:
    """Attribution graph of PROMPT through MODEL's local replacement (transcoders, frozen attention).

    Writes OUT/graph.json (nodes, pruned edges, scores) only once the graph is complete; with
    --artifacts, also saves it in that artifact directory (graphs/NAME.json under MODEL) for the viewer.
    """
    import torch

    from . import graphs as G
    from .core.files import write_json
    from .models.load import load

    if threads:
        torch.set_num_threads(threads)
    sets = _feature_sets(feature_set or [])
    if (sets or store is not None) and artifacts is None:
        raise typer.BadParameter("--store and --feature-set describe the graph saved with --artifacts; give "
                                 "--artifacts DIR too")
    if artifacts is not None:
        from .artifacts import ArtifactError, check_name
        try:
            check_name(name, "graph name")
        except ArtifactError as e:
            raise typer.BadParameter(str(e)) from None
    t0 = time.monotonic()
    with console.status(f"loading {model}"):
        m = load(model, device=device)
    try:
        tcs = G.load_transcoders(transcoders, model=model, adapter=m) if transcoders is not None else {}
    except G.LatentError as e:
        raise typer.BadParameter(str(e)) from None
    if device is not None:
        for tc in tcs.values():  # the transcoders run beside the model
            tc.to(device)
    if getattr(m, "tokenizer", None) is None:
        raise typer.BadParameter(f"{model} has no tokenizer to read the prompt with")
    ids = m.to_tokens(prompt, prepend_bos=bos)["input_ids"]
    vocab = m.run(ids[:, :1]).logits.shape[-1]
    tid = _target_id(m, target, vocab) if target is not None else None
    try:
        rep = G.LocalReplacement.build(m, ids, tcs, drop_first=int(bos))  # BOS: never a transcoder's training token
        g = G.attribute(rep, tid, memory_budget=memory_gb * 1e9, batch_size=batch,
                        token_text=m.to_str_tokens(ids[0]), model_name=model)
    except (G.LatentError, G.ReplacementError, G.GraphBudgetError) as e:
        raise typer.BadParameter(str(e)) from None
    p = G.prune(g, node_threshold, edge_threshold)
    seconds = time.monotonic() - t0
    scores = {**p.scores, "exactness": g.exactness, "linearity_error": g.linearity_error, "seconds": seconds}
    doc = g.to_json(keep=p.keep, edges=p.edges, scores=scores, influence=p.influence)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "graph.json", doc)
    if artifacts is not None:
        from .artifacts import ArtifactError, ArtifactWriter
        writer, known = None, True
        try:
            writer = ArtifactWriter(artifacts)
            known = any(m["name"] == model for m in writer.manifest["models"])
            saved = writer.model(model).graph(name, doc, prompt=prompt, feature_sets=sets, store=store)
        except ArtifactError as e:
            if writer is not None and not known:
                writer.forget(model)  # registered by this refusal, with nothing saved: out of the manifest again
            raise typer.BadParameter(str(e)) from None
    t = Table("measure", "value", title=f"attribution graph of {prompt!r} on {model}")
    for k in ("replacement", "completeness", "pruned_replacement", "pruned_completeness", "kept_latents",
              "latents", "kept_edges", "exactness", "linearity_error", "seconds"):
        v = scores[k]
        t.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    console.print(t)
    logits = [n for n in doc["nodes"] if n["kind"] == "logit"]
    console.print("logits: " + ", ".join(f"{m.to_str_tokens([n['index']])[0]!r} {n['prob']:.3f}" for n in logits))
    if out is not None:
        console.print(f"graph: {out / 'graph.json'}")
    if artifacts is not None:
        console.print(f"saved as {saved} (view it with `mechscope view {artifacts}`)")
    if as_json:
        print(json.dumps(doc))
