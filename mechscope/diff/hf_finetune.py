"""Brief fine-tunes of a Hugging Face causal LM on one narrow domain (the diff's real-model pairs).

`mechscope diff` is meant for a real language model and what a short, narrow fine-tune did to it
(Minder et al. 2025: narrow fine-tuning leaves readable traces). This module makes such pairs here,
offline: SmolLM2-135M (or any causal LM `mechscope.load` reads) trained `steps` steps of `batch`
windows of `seq_len` tokens on the training split of one zoo corpus (`python-docs` or
`shakespeare`), tokenised with the model's own tokenizer, with AdamW (warm-up, then cosine decay to
zero). Each step's windows, and its dropout where the model has any, are drawn from generators seeded
by (seed, step), so a resumed run trains to the same weights as an uninterrupted one.

The result is a Hugging Face directory (config.json, model.safetensors, the tokenizer) at
`$MECHSCOPE_CACHE/diff/<model>-<data>-<steps>-s<seed>`, with `finetune.json` recording the recipe,
the training losses and the held-out loss of A and B on the domain's test documents. Work in progress
is checkpointed every `checkpoint_every` steps into a hidden directory beside it (one safetensors file
of the weights and AdamW moments, with the step and losses in its metadata, renamed into place): a
killed run resumes from its last checkpoint, and the result directory appears, by a rename, only when
it is complete.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.errors import LoadError
from ..core.files import write_dir_atomically, write_json
from ..core.paths import cache_dir
from ..core.progress import duration, note, progress_bar

DOMAINS = ("python-docs", "shakespeare")


@dataclass(frozen=True)
class HFTune:
    """One brief fine-tune: the model, the corpus it trains on, and the recipe."""

    model: str = "smollm2-135m"
    data: str = "python-docs"
    steps: int = 50
    batch: int = 4
    seq_len: int = 128
    lr: float = 5e-5
    warmup: int = 5
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.data not in DOMAINS:
            raise ValueError(f"fine-tune data {self.data!r} is not one of {', '.join(DOMAINS)}")
        if min(self.steps, self.batch, self.seq_len) < 1 or self.lr <= 0 or self.warmup < 0:
            raise ValueError(f"steps, batch and seq_len must be positive, lr above 0 and warmup not negative: {self}")

    @property
    def name(self) -> str:
        """The cache directory's name."""
        return f"{Path(self.model).name}-{self.data}-{self.steps}-s{self.seed}"

    def lr_at(self, step: int) -> float:
        """The learning rate of step `step` (0-based): linear warm-up, then cosine decay to zero."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        span = max(1, self.steps - self.warmup)
        return 0.5 * self.lr * (1 + math.cos(math.pi * (step - self.warmup) / span))


def tune_dir(tune: HFTune) -> Path:
    """Where the finished fine-tune `tune` is cached."""
    return cache_dir() / "diff" / tune.name


def domain_stream(tokenizer: Any, data: str, split: str = "train", max_tokens: int = 400_000,
                  seed: int = 0) -> Tensor:
    """(n,) token ids of the `split` documents of zoo corpus `data`, in a seeded random order, each followed by
    the end-of-text token, until `max_tokens` are read."""
    from ..zoo import datasets

    docs = datasets.documents(data, split)
    if not docs:
        raise LoadError(f"the zoo corpus {data!r} has no {split} documents")
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed)).tolist()
    eos = tokenizer.eos_token_id
    parts, n = [], 0
    for i in order:
        ids = tokenizer.encode(docs[i][1], add_special_tokens=False)
        if eos is not None:
            ids = ids + [eos]
        parts.append(torch.tensor(ids, dtype=torch.long))
        n += len(ids)
        if n >= max_tokens:
            break
    return torch.cat(parts)


def windows(stream: Tensor, tune: HFTune, step: int) -> Tensor:
    """(batch, seq_len) training windows of step `step`, the same for every run of `tune`."""
    if stream.numel() <= tune.seq_len:
        raise LoadError(f"the {tune.data} text has {stream.numel()} tokens: fewer than one window of {tune.seq_len}")
    g = torch.Generator().manual_seed(tune.seed * 1_000_003 + step)
    starts = torch.randint(0, stream.numel() - tune.seq_len, (tune.batch,), generator=g)
    return stream[starts[:, None] + torch.arange(tune.seq_len)]


@torch.no_grad()
def heldout_loss(module: Any, ids: Tensor, batch: int = 4) -> float:
    """Mean next-token loss (nats) of `module` on the windows `ids` (n, seq_len)."""
    from ..zoo.recipes.textlm import next_token_loss

    tot = 0.0
    for s in range(0, ids.shape[0], batch):
        x = ids[s:s + batch].to(module.device)
        tot += float(next_token_loss(module(input_ids=x).logits.float(), x)) * x.shape[0]
    return tot / ids.shape[0]


def _state(module: Any, opt: torch.optim.Optimizer) -> dict[str, Tensor]:
    out = {}
    for name, p in module.named_parameters():  # each tied weight once; buffers are rebuilt from the config
        out[f"w.{name}"] = p
        st = opt.state.get(p)
        if st:
            out[f"m.{name}"], out[f"v.{name}"] = st["exp_avg"], st["exp_avg_sq"]
    return out


def _restore(module: Any, opt: torch.optim.Optimizer, tensors: dict[str, Tensor], step: int) -> None:
    for name, p in module.named_parameters():
        with torch.no_grad():
            p.copy_(tensors[f"w.{name}"])
        if f"m.{name}" in tensors:
            opt.state[p] = {"step": torch.tensor(float(step)), "exp_avg": tensors[f"m.{name}"].to(p.device),
                            "exp_avg_sq": tensors[f"v.{name}"].to(p.device)}


def train_hf_finetune(tune: HFTune = HFTune(), *, progress: bool = True, checkpoint_every: int = 10,
                      eval_windows: int = 8, device: str | None = None) -> Path:
    """Train (or resume, or find cached) the fine-tune `tune`; the finished Hugging Face directory (see the module
    docstring).

    Example::

        path = train_hf_finetune(HFTune("smollm2-135m", "python-docs", steps=50))
        b = ms.load(path)                      # diff it: mechscope diff smollm2-135m PATH
    """
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from ..models.load import load

    out = tune_dir(tune)
    if (out / "finetune.json").is_file():
        return out
    t0 = time.monotonic()
    a = load(tune.model, device=device)
    module, tok = a.module, a.tokenizer
    if tok is None:
        raise LoadError(f"{tune.model} has no tokenizer: the fine-tune reads text")
    stream = domain_stream(tok, tune.data, "train", max_tokens=max(400_000, 4 * tune.steps * tune.batch * tune.seq_len),
                           seed=tune.seed)
    test = domain_stream(tok, tune.data, "test", max_tokens=eval_windows * tune.seq_len * 4, seed=0)
    n_eval = min(eval_windows, test.numel() // tune.seq_len)
    if n_eval < 1:
        raise LoadError(f"the {tune.data} test split has {test.numel()} tokens: not one window of {tune.seq_len}")
    held = test[: n_eval * tune.seq_len].view(n_eval, tune.seq_len)
    work = out.parent / f".{out.name}.partial"
    work.mkdir(parents=True, exist_ok=True)
    spec = dataclasses.asdict(tune)
    state_path = work / "state.safetensors"  # weights, AdamW moments, and in its metadata the step and losses
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=tune.lr,
                            weight_decay=tune.weight_decay)
    start, losses = 0, []
    if state_path.is_file():
        with safe_open(str(state_path), "pt") as f:
            meta = f.metadata()
        if json.loads(meta["spec"]) != spec:
            raise LoadError(f"{work} holds a fine-tune of another recipe; delete it to start again")
        start, losses = int(meta["step"]), json.loads(meta["losses"])
        _restore(module, opt, load_file(str(state_path)), start)
        note(f"fine-tune {tune.name}: resuming at step {start} of {tune.steps}")
    ref_path = work / "reference.json"  # A's held-out loss, measured once before the first step
    if ref_path.is_file():
        loss_a = json.loads(ref_path.read_text())["heldout_loss_a"]
    else:
        module.eval()
        loss_a = heldout_loss(module, held)
        write_json(ref_path, {"heldout_loss_a": loss_a})
    module.train()
    bar = progress_bar(total=tune.steps, initial=start, desc=f"fine-tune {tune.name}", unit="step")
    for step in range(start, tune.steps):
        for g in opt.param_groups:
            g["lr"] = tune.lr_at(step)
        x = windows(stream, tune, step).to(module.device)
        with torch.random.fork_rng(devices=[module.device] if module.device.type == "cuda" else []):
            torch.manual_seed(tune.seed * 1_000_003 + step)  # dropout, where the model has it, as in any other run
            loss = module(input_ids=x, labels=x).loss
        if not torch.isfinite(loss):
            raise RuntimeError(f"fine-tune {tune.name}: the loss is {float(loss)} at step {step}; lower the learning rate")
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(float(loss.detach()), 5))
        bar.update(1)
        bar.set_postfix_str(f"loss {losses[-1]:.3f}")
        if (step + 1) % checkpoint_every == 0 and step + 1 < tune.steps:
            tmp = state_path.with_suffix(".tmp")
            save_file({k: v.detach().contiguous().cpu() for k, v in _state(module, opt).items()}, str(tmp),
                      metadata={"spec": json.dumps(spec), "step": str(step + 1), "losses": json.dumps(losses)})
            tmp.replace(state_path)  # one file, renamed into place: the step always matches the weights
    bar.close()
    module.eval()
    loss_b = heldout_loss(module, held)

    def fill(tmp: Path) -> None:
        module.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_json(tmp / "finetune.json", {
            "recipe": spec, "from": tune.model, "train_losses": losses, "heldout_windows": n_eval,
            "heldout_loss_a": loss_a, "heldout_loss_b": loss_b, "seconds": round(time.monotonic() - t0, 1),
            "note": f"{tune.steps} steps of {tune.batch} x {tune.seq_len} tokens of the {tune.data} training split"})

    write_dir_atomically(out, fill)
    shutil.rmtree(work, ignore_errors=True)
    note(f"fine-tune {tune.name}: held-out {tune.data} loss {loss_a:.3f} -> {loss_b:.3f} "
         f"({duration(time.monotonic() - t0)}), at {out}")
    return out


__all__ = ["DOMAINS", "HFTune", "domain_stream", "heldout_loss", "train_hf_finetune", "tune_dir", "windows"]
