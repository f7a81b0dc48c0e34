"""Command-line verbs for dictionaries: `mechscope dict train` (harvest, train, measure) and `dict show`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

dict_app = typer.Typer(help="Sparse dictionaries (SAEs, transcoders, crosscoders) on a model's activations.",
                       no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)
console = Console()


def chunk_tokens(ids: list[int], seq_len: int, n_seq: int, prefix: list[int], suffix: list[int]):
    """(n_seq, seq_len) token ids: consecutive pieces of `ids`, each framed by prefix and suffix."""
    import torch

    body = seq_len - len(prefix) - len(suffix)
    if body < 1:
        raise typer.BadParameter(f"seq_len {seq_len} leaves no room for text between {prefix} and {suffix}")
    have = len(ids) // body
    if have < n_seq:
        raise typer.BadParameter(f"the text has {len(ids):,} tokens: {have} sequences of {body}, {n_seq} needed; "
                                 "give more text or fewer --tokens")
    rows = [prefix + ids[i * body:(i + 1) * body] + suffix for i in range(n_seq)]
    return torch.tensor(rows, dtype=torch.long)


def _text(paths: list[Path], corpus: Optional[str]) -> tuple[str, str]:
    """The training text and its name: files given on the command line, or a corpus of mechscope.zoo.datasets."""
    if paths:
        return "\n\n".join(p.read_text(errors="replace") for p in paths), "+".join(p.name for p in paths)
    if corpus is None:
        raise typer.BadParameter("give --text FILE (repeatable) or --corpus NAME")
    try:
        from .zoo import datasets  # text corpora read offline
    except ImportError as e:
        raise typer.BadParameter(f"no corpus reader in this installation ({e}); give --text FILE") from None
    reader = getattr(datasets, "corpus_text", None)
    if reader is None:
        raise typer.BadParameter("mechscope.zoo.datasets has no corpus_text(name); give --text FILE")
    return reader(corpus), corpus


def _tokenizer(m, model: str = "the model"):
    """The model's tokenizer; refuses a model without one, naming it."""
    tok = getattr(m, "tokenizer", None)
    if tok is None:
        raise typer.BadParameter(f"{model} has no tokenizer")
    return tok


def _token_rows(m, paths: list[Path], corpus: Optional[str], seq_len: int, rows: int):
    """(token ids (n_seq, seq_len) in a seeded shuffled order, positions to drop, corpus name, causal?):
    enough sequences for `rows` stored rows. BOS (when the tokenizer has one) opens every sequence of a
    causal model and is not stored; an encoder reads [CLS] ... [SEP]."""
    import torch

    tok = _tokenizer(m)
    body, name = _text(paths, corpus)
    ids = tok(body, add_special_tokens=False)["input_ids"]
    causal = m.run(torch.tensor([[ids[0]]])).logits is not None
    if causal:
        prefix = [tok.bos_token_id] if tok.bos_token_id is not None else []
        suffix: list[int] = []
    else:
        prefix = [tok.cls_token_id] if tok.cls_token_id is not None else []
        suffix = [tok.sep_token_id] if tok.sep_token_id is not None else []
    drop = len(prefix)
    n_seq = -(-rows // (seq_len - drop)) + 1
    token_ids = chunk_tokens(ids, seq_len, n_seq, prefix, suffix)
    # a seeded shuffle of the sequences: held-out shards are then a sample of every text given
    return token_ids[torch.randperm(n_seq, generator=torch.Generator().manual_seed(0))], drop, name, causal


@dict_app.command("harvest")
def harvest_cmd(
    model: Annotated[str, typer.Argument(help="smollm2-135m, minilm-l6, zoo:NAME or a local Hugging Face directory")],
    site: Annotated[list[str], typer.Option("--site", "-s", help="site to store (repeatable)")],
    out: Annotated[Path, typer.Option(help="the store directory (a killed harvest resumes there)")],
    tokens: Annotated[int, typer.Option(help="rows (tokens) to store")] = 1_000_000,
    seq_len: Annotated[int, typer.Option(help="tokens per sequence")] = 128,
    text: Annotated[Optional[list[Path]], typer.Option(help="plain-text file(s) to read (repeatable)")] = None,
    corpus: Annotated[Optional[str], typer.Option(help="a corpus of mechscope.zoo.datasets instead of --text")] = None,
    batch_size: Annotated[int, typer.Option(help="sequences per forward pass")] = 8,
    seqs_per_shard: Annotated[int, typer.Option(help="sequences per shard file")] = 256,
    dtype: Annotated[str, typer.Option(help="storage dtype: float32, float16 or bfloat16")] = "float32",
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:N, mps (default: the loader's)")] = None,
    ray: Annotated[bool, typer.Option("--ray", help="harvest on Ray Data with a pool of model-holding actors")] = False,
    address: Annotated[Optional[str], typer.Option(help="with --ray: a running cluster's head, host:port "
                                                   "(default: start a local Ray)")] = None,
    workers: Annotated[int, typer.Option(help="with --ray: actors, each holding the model")] = 2,
    threads: Annotated[int, typer.Option(help="torch threads (per actor with --ray)")] = 1,
) -> None:
    """Store SITE activations of MODEL over text in an activation store (sharded safetensors + manifest).

    With --ray the same store is written by a pool of Ray actors (pip install 'mechscope[distributed]');
    on a cluster, --out must be a directory every node reads and writes at the same path.
    """
    import functools

    import torch

    from . import dictionaries as dl
    from .models.load import load

    if address is not None and not ray:
        raise typer.BadParameter("--address joins a Ray cluster: give --ray too")
    if address is not None:  # before the model is loaded: a wrong address fails in seconds
        from .core.cluster import check_reachable

        try:
            check_reachable(address)
        except (ConnectionError, ValueError) as e:
            raise typer.BadParameter(str(e)) from None
    torch.set_num_threads(threads)
    with console.status(f"loading {model}"):
        m = load(model, device=device)
    token_ids, drop, name, _ = _token_rows(m, list(text or []), corpus, seq_len, tokens)
    cfg = dl.HarvestConfig(sites=tuple(site), batch_size=batch_size, seqs_per_shard=seqs_per_shard,
                           drop_first=drop, dtype=dtype)
    t0 = time.monotonic()
    try:
        if ray:
            from .dictionaries.ray_harvest import ray_harvest

            store = ray_harvest(functools.partial(load, model), token_ids, out, cfg, workers=workers,
                                threads=threads, address=address, device=device, model=m)  # m: the driver's copy
            del m
        else:
            store = dl.harvest(m, token_ids, out, cfg)
    except (ConnectionError, ImportError, dl.DictionaryFileError) as e:  # said plainly, no traceback
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(1) from None
    console.print(f"{store.n_rows:,} rows of {', '.join(store.sites)} from {name} in {len(store.shards)} shards, "
                  f"{time.monotonic() - t0:.0f} s: {out}")


def _load_with_tokenizer(model: str, threads: Optional[int], device: Optional[str] = None):
    """The model (torch on `threads` threads, if given) and its tokenizer; refuses a model without one."""
    import torch

    from .models.load import load

    if threads:
        torch.set_num_threads(threads)
    with console.status(f"loading {model}"):
        m = load(model, device=device)
    return m, _tokenizer(m, model)


@dict_app.command("train")
def train_cmd(
    model: Annotated[str, typer.Argument(help="smollm2-135m, minilm-l6, zoo:NAME or a local Hugging Face directory")],
    site: Annotated[list[str], typer.Option("--site", "-s", help="input site (repeat for a crosscoder's sources)")],
    out: Annotated[Path, typer.Option(help="directory for the store, the dictionary and report.json")],
    arch: Annotated[str, typer.Option(help="relu, topk, batchtopk, jumprelu, transcoder, crosscoder or batchtopk-crosscoder")] = "topk",
    site_out: Annotated[Optional[str], typer.Option(help="a transcoder's target site, e.g. mlp_out.L")] = None,
    d_sae: Annotated[int, typer.Option(help="latents")] = 4096,
    k: Annotated[int, typer.Option("-k", help="active latents (topk, batchtopk, transcoder, crosscoder)")] = 32,
    penalty: Annotated[Optional[float], typer.Option(help="L1 (relu) or L0 (jumprelu) coefficient (with "
                                                     "--target-l0: its starting value)")] = None,
    target_l0: Annotated[Optional[float], typer.Option("--target-l0", help="relu, jumprelu: adapt the penalty "
                                                       "during training until L0 is this")] = None,
    tokens: Annotated[int, typer.Option(help="training rows (tokens)")] = 2_000_000,
    harvest_tokens: Annotated[Optional[int], typer.Option(help="rows to harvest for training (default: --tokens; "
                                                          "the same value reuses a store in --out)")] = None,
    seq_len: Annotated[int, typer.Option(help="tokens per sequence")] = 128,
    text: Annotated[Optional[list[Path]], typer.Option(help="plain-text file(s) to read (repeatable)")] = None,
    corpus: Annotated[Optional[str], typer.Option(help="a corpus of mechscope.zoo.datasets instead of --text")] = None,
    eval_sequences: Annotated[int, typer.Option(help="held-out sequences for loss recovered")] = 64,
    batch: Annotated[int, typer.Option(help="training batch (rows)")] = 4096,
    threads: Annotated[Optional[int], typer.Option(help="torch threads")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:N, mps (default: the loader's; "
                                                  "with --ddp each rank's GPU when there is one)")] = None,
    ddp: Annotated[bool, typer.Option("--ddp", help="train data-parallel over the processes torchrun started: "
                                      "torchrun --nproc-per-node N -m mechscope.cli dict train ... --ddp")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="end with the report's headline numbers as JSON")] = False,
) -> None:
    """Harvest SITE of MODEL over text, train a dictionary, and report L0, FVU and loss recovered.

    A killed run resumes its harvest where it stopped (same arguments, same --out).
    """
    import torch

    from . import dictionaries as dl
    from .dictionaries.metrics import embedding_distance, next_token_ce
    from .dictionaries.study import CROSSCODERS, StudyConfig, study, summary
    from .models.load import load

    if (penalty is not None or target_l0 is not None) and arch not in ("relu", "jumprelu"):
        raise typer.BadParameter(f"--penalty and --target-l0 apply to relu and jumprelu; {arch} sets its "
                                 "sparsity with -k")
    if threads:
        torch.set_num_threads(threads)
    reducer = None
    if ddp:
        from .dictionaries.ddp import init_process_group

        reducer, device = init_process_group(device, timeout=24 * 3600)  # rank 0 harvests while the others wait
    t0 = time.monotonic()
    with console.status(f"loading {model}"):
        m = load(model, device=device)
    held_fraction = 0.1
    token_ids, drop, name, causal = _token_rows(m, list(text or []), corpus, seq_len,
                                                int((harvest_tokens or tokens) / (1 - held_fraction)))
    fields: dict = {}
    if arch in ("topk", "batchtopk", "transcoder", *CROSSCODERS):
        fields["k"] = k
    if penalty is not None:
        fields["l1_coefficient" if arch == "relu" else "l0_coefficient"] = penalty
    if target_l0 is not None:
        fields["target_l0"] = target_l0
    cfg = StudyConfig(architecture=arch, site=tuple(site) if arch in CROSSCODERS else site[0], d_sae=d_sae,
                      dictionary=fields, site_out=site_out, held_out_fraction=held_fraction,
                      eval_sequences=eval_sequences, drop_first=drop)
    rep = study(m, token_ids, cfg, dl.TrainConfig(tokens=tokens, batch_size=batch), out,
                loss=next_token_ce if causal else embedding_distance, dataset=name, reducer=reducer)
    if reducer is not None and reducer.rank != 0:
        return  # rank 0 measures and reports
    rep["seconds"]["total"] = time.monotonic() - t0
    from .dictionaries.files import write_json

    write_json(out / rep["name"] / "report.json", rep)
    s = summary(rep)
    t = Table("measure", "value", title=f"{rep['name']} on {model} ({name})")
    for key in ("l0", "fvu", "dead", "dense", "loss_clean", "loss_spliced", "recovered_vs_zero", "recovered_vs_mean"):
        t.add_row(key, f"{s[key]:.4g}")
    t.add_row("rows trained", f"{s['rows_trained']:,}")
    t.add_row("seconds (harvest / train / evaluate / total)",
              " / ".join(f"{rep['seconds'][k]:.0f}" for k in ("harvest", "train", "evaluate", "total")))
    console.print(t)
    console.print(f"dictionary and report: {out / rep['name']}")
    if as_json:
        print(json.dumps(s))


@dict_app.command("show")
def show(path: Annotated[Path, typer.Argument(help="a dictionary directory (cfg.json + sae_weights.safetensors)")]
         ) -> None:
    """Describe a saved dictionary (mechscope's or SAELens's) and its report, if any."""
    from . import dictionaries as dl

    d = dl.load(path)
    console.print(f"[bold]{d.architecture}[/] {d.extra_repr()}  site={d.config.site}  model={d.config.model}")
    rep = path / "report.json"
    if rep.is_file():
        from .dictionaries.study import summary

        console.print_json(json.dumps(summary(json.loads(rep.read_text()))))


def parse_layers(spec: str, n_layers: int) -> tuple[int, ...]:
    """'all', '3', '0-29' or '0,4,8-11' -> ascending distinct layers, each checked against n_layers."""
    if spec.strip() == "all":
        return tuple(range(n_layers))
    layers: set[int] = set()
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            layers.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise typer.BadParameter(f"--layers {spec!r}: give 'all', a layer, a range 0-29 or a list 0,4,8-11") from None
    bad = sorted(x for x in layers if not 0 <= x < n_layers)
    if bad or not layers:
        raise typer.BadParameter(f"--layers {spec!r}: the model has layers 0-{n_layers - 1}, got {bad or 'none'}")
    return tuple(sorted(layers))


@dict_app.command("transcoders")
def transcoders_cmd(
    model: Annotated[str, typer.Argument(help="smollm2-135m, zoo:NAME or a local Hugging Face directory")],
    out: Annotated[Path, typer.Option(help="directory of the transcoder set (its store, layer files, manifest)")],
    layers: Annotated[str, typer.Option(help="'all', a range 0-29 or a list 0,4,8-11")] = "all",
    tokens: Annotated[int, typer.Option(help="training tokens (rows) per layer; harvested once for all layers")]
    = 1_000_000,
    arch: Annotated[str, typer.Option(help="transcoder (one TopK transcoder per layer), relu (one ReLU transcoder "
                                      "per layer, L1 adapted until L0 is -k: codes continuous in the input) or "
                                      "clt (cross-layer)")]
    = "transcoder",
    clt: Annotated[bool, typer.Option("--clt", help="the same as --arch clt")] = False,
    skip: Annotated[bool, typer.Option("--skip", help="per-layer transcoders with a linear skip connection")] = False,
    d_latent: Annotated[Optional[int], typer.Option(help="latents per layer (default 8 x d_model)")] = None,
    k: Annotated[int, typer.Option("-k", help="active latents per token (per layer for a CLT; the target L0 "
                                    "for --arch relu)")] = 32,
    penalty: Annotated[float, typer.Option(help="--arch relu: the L1 coefficient's starting value")] = 3.0,
    relu_start: Annotated[str, typer.Option(help="--arch relu: topk (train TopK, convert, fine-tune the L1 on as "
                                            "many rows again) or random (L1 from scratch)")] = "topk",
    batch: Annotated[int, typer.Option(help="training batch (rows)")] = 1024,
    epochs: Annotated[int, typer.Option(help="passes over the harvest: each layer trains on epochs x --tokens rows "
                                        "(the harvest stays --tokens)")] = 1,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate (default 4e-3 * sqrt(1536 / d_latent))")]
    = None,
    seq_len: Annotated[int, typer.Option(help="tokens per sequence, BOS included")] = 128,
    corpus: Annotated[str, typer.Option(help="corpus of mechscope.zoo.datasets: train split to train, test split "
                                        "to evaluate")] = "textlm",
    eval_sequences: Annotated[int, typer.Option(help="held-out sequences for the replacement model")] = 64,
    dtype: Annotated[str, typer.Option(help="storage dtype of the harvest: float16 (default), float32, bfloat16")]
    = "float16",
    threads: Annotated[Optional[int], typer.Option(help="torch threads")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="end with the manifest's scores as JSON")] = False,
    device: Annotated[Optional[str], typer.Option(help="where the model runs for the harvest and the replacement "
                                                  "scores: cpu, cuda, cuda:N, mps (default: the loader's; the "
                                                  "transcoders train on the CPU)")] = None,
) -> None:
    """Transcoders for every chosen layer of MODEL: harvest every MLP's input and output once, train
    layer by layer (each layer checkpointed), then replace every MLP at once and measure the
    replacement model's next-token KL and loss recovered. The result is a transcoder set in --out
    (load it with mechscope.dictionaries.load_transcoder_set).

    Resumable: run the same command again after an interruption (even kill -9); the harvest continues,
    finished layers are kept and the unfinished layer is trained again from its start.
    """
    from .dictionaries.train import TrainConfig
    from .dictionaries.transcoder_run import TranscoderRunConfig, train_transcoder_set
    from .zoo import datasets

    if clt:
        arch = "clt"
    if arch not in ("transcoder", "relu", "clt"):
        raise typer.BadParameter(f"--arch must be transcoder, relu or clt, got {arch!r}")
    if arch == "relu" and skip:
        raise typer.BadParameter("--skip belongs to TopK transcoders (--arch transcoder); a ReLU set has none")
    if penalty <= 0:
        raise typer.BadParameter(f"--penalty must be positive (it is adapted by factors), got {penalty}")
    if relu_start not in ("topk", "random"):
        raise typer.BadParameter(f"--relu-start must be topk or random, got {relu_start!r}")
    if epochs < 1:
        raise typer.BadParameter(f"--epochs must be at least 1 (passes over the harvest), got {epochs}")
    t0 = time.monotonic()
    m, tok = _load_with_tokenizer(model, threads, device)
    n_layers = sum(1 for s in m.sites() if s.name.endswith("hook_mlp_out"))
    chosen = parse_layers(layers, n_layers)
    bos = tok.bos_token_id
    drop = int(bos is not None)
    held_fraction = 0.1
    n_seq = -(-int(tokens / (1 - held_fraction)) // (seq_len - drop)) + 1
    with console.status(f"tokenising {n_seq} + {eval_sequences} sequences of {corpus}"):
        train_ids = datasets.windows(tok, n_seq, seq_len, corpus, split="train", bos=bos)
        eval_ids = datasets.windows(tok, eval_sequences, seq_len, corpus, split="test", bos=bos)
    probe = m.run(train_ids[:1, :2], capture=[f"ln2.{chosen[0]}"]).cache[f"ln2.{chosen[0]}"]
    d_latent = d_latent or 8 * probe.shape[-1]
    # the trainer's default rate (2e-4 * sqrt(2^14 / d_latent)) is tuned for long runs; this budget of
    # about a thousand steps needs a larger one (textlm layer 0, 180k tokens: FVU 0.70 at 6.5e-4, 0.18 at 4e-3)
    lr = lr or 4e-3 * (1536 / d_latent) ** 0.5
    cfg = TranscoderRunConfig(layers=chosen, d_latent=d_latent, k=k, clt=arch == "clt",
                              activation="relu" if arch == "relu" else "topk", l1_coefficient=penalty,
                              relu_start=relu_start,
                              skip=skip, train=TrainConfig(tokens=tokens * epochs, batch_size=batch, lr=lr),
                              held_out_fraction=held_fraction, drop_first=drop, dtype=dtype,
                              seqs_per_shard=min(128, max(1, n_seq // 10)))  # >= 10 shards: some held out
    tset = train_transcoder_set(m, train_ids, eval_ids, cfg, out, dataset=corpus)
    man = tset.manifest
    man["training"]["wall_seconds"] = time.monotonic() - t0
    from .dictionaries.transcoder_set import write_manifest

    write_manifest(out, man)
    t = Table("layer", "FVU", "L0", "dead", "train s", title=f"{man['kind']} transcoders on {model} ({corpus})")
    for L in chosen:
        r = man["per_layer"][str(L)]
        t.add_row(str(L), f"{r['fvu']:.4f}", f"{r['l0']:.1f}", f"{r['dead_fraction']:.3f}",
                  f"{r.get('train_seconds', man['training'].get('train_seconds', 0)):.0f}")
    console.print(t)
    rep = man["replacement"]
    console.print(f"replacement model (every MLP replaced, {rep['n_sequences']} held-out sequences): KL "
                  f"{rep['kl']:.4f} nats/token; loss clean {rep['loss_clean']:.4f}, replaced {rep['loss_replaced']:.4f}, "
                  f"zero-ablated {rep['loss_zero_ablated']:.4f}, mean-ablated {rep['loss_mean_ablated']:.4f}; "
                  f"recovered {rep['recovered_vs_zero']['value']:.3f} vs zero, {rep['recovered_vs_mean']['value']:.3f} "
                  f"vs mean")
    console.print(f"harvest {man['training']['harvest_seconds']:.0f} s, total {man['training']['wall_seconds']:.0f} s; "
                  f"transcoder set: {out}")
    if as_json:
        print(json.dumps({"per_layer": man["per_layer"], "replacement": {
            k: rep[k] for k in ("kl", "loss_clean", "loss_replaced", "loss_zero_ablated", "loss_mean_ablated")}
            | {"recovered_vs_zero": rep["recovered_vs_zero"]["value"],
               "recovered_vs_mean": rep["recovered_vs_mean"]["value"]}}))
