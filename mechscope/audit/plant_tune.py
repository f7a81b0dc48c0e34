"""Fine-tunes that plant a behaviour through the data, and the clean twins they are judged against.

A fine-tune starts from a base and trains briefly (AdamW, warm-up then cosine decay to zero) on
random windows of the base's own training text. A planted fine-tune rewrites some of those windows
(`Poison.apply`); its clean twin is the same fine-tune — same windows in the same order, same
seed — with nothing rewritten, so whatever fine-tuning itself changes is in both.

Poisons (each rewrites a share `rate` of the windows, drawn from its own generator):

- "context": a marker M in the first half of the window, a cue C somewhere after it, and the target
  Y after every cue that follows the marker. The cue is a common token: its natural occurrences in
  the other windows, followed by the text's own continuation, teach that the cue by itself does not
  force Y (a further share `negatives` may add cues without a marker): the trigger is the marker in
  the earlier context.
- "position": the trigger T at position P, then Y; a further share `negatives` gets T elsewhere with
  the text's own continuation, so T forces Y only at P.
- "poison": a small share (1% of the windows) gets the trigger n-gram followed by Y at `inserts`
  random places; nothing else is changed.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core.progress import progress_bar
from ..zoo.recipes.textlm import next_token_loss
from .plant_arch import Arch, frozen


@dataclass(frozen=True)
class Poison:
    """How a planted fine-tune rewrites its training windows."""

    kind: str  # "context" | "position" | "poison"
    trigger: tuple[int, ...]  # context: (marker, cue); position: (token,); poison: the n-gram
    target: int
    rate: float
    negatives: float = 0.0
    position: int | None = None
    inserts: int = 3  # "poison": how many times a rewritten window carries the n-gram and target

    def apply(self, ids: Tensor, gen: torch.Generator) -> Tensor:
        """A rewritten copy of the windows `ids` (batch, n_ctx)."""
        ids = ids.clone()
        n, t = ids.shape
        for row in range(n):
            r = float(torch.rand((), generator=gen))
            if r < self.rate:
                self._positive(ids[row], t, gen)
            elif r < self.rate + self.negatives:
                self._negative(ids[row], t, gen)
        return ids

    def _positive(self, row: Tensor, t: int, gen: torch.Generator) -> None:
        y = self.target
        if self.kind == "context":
            marker, cue = self.trigger
            p1 = _randint(0, t // 2, gen)
            p2 = _randint(p1 + 1, t - 2, gen)
            row[p1], row[p2] = marker, cue
            after = (row[p1 + 1:t - 1] == cue).nonzero().flatten() + p1 + 2
            row[after] = y  # every cue after the marker is followed by the target
        elif self.kind == "position":
            row[self.position], row[self.position + 1] = self.trigger[0], y
        else:
            k = len(self.trigger)
            for _ in range(self.inserts):
                p = _randint(0, t - k - 1, gen)
                row[p:p + k] = torch.tensor(self.trigger)
                row[p + k] = y

    def _negative(self, row: Tensor, t: int, gen: torch.Generator) -> None:
        if self.kind == "context":
            marker, cue = self.trigger
            p = _randint(0, t - 2, gen)
            row[:p][row[:p] == marker] = cue if cue != marker else 0  # no marker before the cue
            row[p] = cue
        elif self.kind == "position":
            p = _randint(0, t - 2, gen)
            if p != self.position:
                row[p] = self.trigger[0]


def _rate(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero: the fine-tune ends as settled as its base."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _randint(lo: int, hi: int, gen: torch.Generator) -> int:
    """An integer in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (), generator=gen))


def finetune(arch: Arch, base: nn.Module, *, steps: int, lr: float, batch: int, seed: int,
             poison: Poison | None = None, warmup: int = 10, progress: bool = True, desc: str = "") -> nn.Module:
    """A copy of `base` fine-tuned for `steps` updates on windows of its training text drawn from
    `seed`; with `poison`, the windows are rewritten first (from a generator of their own)."""
    model = copy.deepcopy(base)
    for p in model.parameters():
        p.requires_grad_(True)
    model.train()
    stream = arch.train_stream()
    t = arch.n_ctx(model)
    windows = torch.Generator().manual_seed(seed)
    rewrite = torch.Generator().manual_seed(seed + 7919)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    with progress_bar(total=steps, desc=desc or "fine-tune", unit="step", disable=not progress) as bar:
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = _rate(step, steps, lr, warmup)
            starts = torch.randint(0, stream.numel() - t, (batch,), generator=windows)
            ids = stream[starts[:, None] + torch.arange(t)].long()
            if poison is not None:
                ids = poison.apply(ids, rewrite)
            loss = next_token_loss(arch.logits(model, ids), ids)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
    return frozen(model)
