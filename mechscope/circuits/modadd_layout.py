"""Where a modular-addition network keeps what: the input encoding and the sites the analyses read.

The modular-arithmetic analyses (key frequencies, the Fourier explanation of the MLP, the network
as code in `modadd_code`, restricted and excluded loss) read a network through a `ModAddLayout`:

    p                  the modulus; answers are logits over 0..p-1
    encode(a, b)       the model's inputs for the pairs (a, b) (tensors (n,))
    operands(ids)      (a, b) back from the inputs' ids (what code sees as `input_ids`)
    embeds             for a and for b: the site holding its embedding and the position in it
                       (None for a site without a position axis)
    neurons            the site whose units are the network's neurons (key frequencies read them)
    hidden             the site just before the unembedding: the answer's features
    logits             the output site
    answer_position    the position the answer is read at in per-position sites (None: no positions)

`ModAddLayout.transformer(p)` is the zoo's one-layer transformer on "a b =" (tokens 0..p-1 and "="
as p, answer at "="); a network of another shape states its own (see the tests: two embedding
tables concatenated into one ReLU layer, and a bilinear layer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


def _pairs_of(ids: Tensor) -> tuple[Tensor, Tensor]:
    return ids[:, 0], ids[:, 1]


@dataclass(frozen=True)
class ModAddLayout:
    """Where a modular-addition network (mod `p`) keeps its inputs, neurons, hidden state and logits.

    `encode(a, b)` makes the network's input for operands a, b (n,); `embeds` names the two operands'
    embedding sites with their positions; `neurons`, `hidden` and `logits` are site names;
    `answer_position` is where the answer is read (None: no position axis); `operands(ids)` recovers a, b.

    Example::

        from mechscope.circuits import ModAddLayout, modadd_hypothesis
        layout = ModAddLayout.transformer(113)   # the zoo's one-layer transformer on "a b =", mod 113
        hyp = modadd_hypothesis(ms.load("zoo:modadd-frac05"), layout)
    """

    p: int
    encode: Callable[[Tensor, Tensor], Any]
    embeds: tuple[tuple[str, int | None], tuple[str, int | None]]
    neurons: str
    hidden: str
    logits: str
    answer_position: int | None = None
    operands: Callable[[Tensor], tuple[Tensor, Tensor]] = _pairs_of

    @classmethod
    def transformer(cls, p: int, layer: int = 0) -> "ModAddLayout":
        """The zoo's modadd transformer: tokens [a, b, p] ("a b ="), the answer read at "="."""
        return cls(p=p, encode=lambda a, b: torch.stack([a, b, torch.full_like(a, p)], 1),
                   embeds=(("embed", 0), ("embed", 1)), neurons=f"mlp.post.{layer}", hidden=f"resid_post.{layer}",
                   logits="logits", answer_position=2)

    @classmethod
    def pair_ids(cls, p: int, *, embeds: tuple[tuple[str, int | None], tuple[str, int | None]], neurons: str,
                 hidden: str, logits: str) -> "ModAddLayout":
        """A network that takes (n, 2) ids [a, b] and has no position axis."""
        return cls(p=p, encode=lambda a, b: torch.stack([a, b], 1), embeds=embeds, neurons=neurons, hidden=hidden,
                   logits=logits, answer_position=None)

    def grid(self) -> tuple[Any, Tensor, Tensor]:
        """Inputs for every pair, row a * p + b, and the operands a, b (p*p,)."""
        a = torch.arange(self.p).repeat_interleave(self.p)
        b = torch.arange(self.p).repeat(self.p)
        return self.encode(a, b), a, b

    def answer(self, act: Tensor) -> Tensor:
        """The answer's entry of a per-position activation (batch, pos, ...) -> (batch, ...)."""
        return act if self.answer_position is None else act[:, self.answer_position]

    def labels(self, ids: Tensor) -> Tensor:
        """(n,): the right answers (a + b) mod p for the inputs `ids`."""
        a, b = self.operands(ids)
        return (a + b) % self.p
