"""Logit lens: read each layer's residual stream through the model's own final norm and unembedding.

Final-norm handling: every layer's residual is normalised by the final norm module *recomputed
on that residual* (its own mean and scale), exactly as if the remaining blocks were skipped. The
result says so in `norm`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.run import run
from ..core.site import Kind, Site
from ..models import wrap


@dataclass(frozen=True)
class LogitLens:
    """logits (layer, batch, pos, vocab): row 0 reads the embeddings (resid_pre 0), row l+1 the
    output of block l; the last row equals the model's logits.

    Example::

        from mechscope.circuits import logit_lens
        model = ms.load("smollm2-135m")
        lens = logit_lens(model, model.to_tokens(["The capital of France is"]))
        lens.logits                              # (layer + 1, batch, pos, vocab)
        lens.rank_of(7042)                       # (layer + 1,): a token's rank at the last position
    """

    logits: Tensor
    norm: str = "final norm recomputed per layer"

    def top(self, k: int = 5, position: int = -1, prompt: int = 0) -> Tensor:
        """(layer, k) token ids with the highest logit at one position."""
        return self.logits[:, prompt, position].topk(k, -1).indices

    def rank_of(self, token: int, position: int = -1, prompt: int = 0) -> Tensor:
        """(layer,) rank of `token` among all tokens, 0 = top."""
        row = self.logits[:, prompt, position]  # (layer, vocab)
        return (row > row[:, token : token + 1]).sum(-1)


def logit_lens(model: Any, inputs: Any) -> LogitLens:
    """Logits of every layer's residual stream on `inputs` (any input the model's adapter takes).

    Example::

        from mechscope.circuits import logit_lens
        model = ms.load("smollm2-135m")
        lens = logit_lens(model, model.to_tokens(["The capital of France is"]))
        lens.top(k=3)                            # (layer + 1, 3) token ids at the last position
    """
    model = wrap(model)
    norm = getattr(model, "final_norm", lambda: None)()
    unembed = getattr(model, "unembed", lambda: None)()
    if norm is None or unembed is None:
        raise ValueError(f"{model.name} exposes no final norm and unembedding to read the residual with")
    sites = [Site(Kind.RESID_PRE, 0)] + [Site(Kind.RESID_POST, layer) for layer in range(model.n_layers)]
    res = run(model, inputs, capture=sites)
    with torch.no_grad():
        stack = torch.stack([res.cache[s] for s in sites])  # (layer, batch, pos, d_model)
        logits = unembed(norm(stack))
    return LogitLens(logits)
