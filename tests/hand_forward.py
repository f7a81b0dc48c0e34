"""A TinyTransformer's forward pass written out by hand, edge by edge, for brute-force checks.

No hooks and no mechscope code: every receiver (each head's query, key and value input, each
MLP's input, the output) reads the sum of the outputs of the senders upstream of it (the input's
embeddings, each head's z @ W_O[h], each MLP's output) plus the attention output biases, and any
single edge sender -> receiver can be given another value of the sender's output. Names are the
edge graph's labels: senders `input`, `a1.0`, `m0`; receivers `a1.0<q`, `m0<`, `output`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mechscope.models.tiny import TinyConfig, TinyTransformer


def tiny_model(seed: int = 0) -> TinyTransformer:
    """Two layers of two heads with layer norm, MLPs and biases, every parameter random (norms and
    biases included, so that none of them is the identity or zero)."""
    cfg = TinyConfig(n_layers=2, d_model=16, n_heads=2, d_head=4, d_mlp=24, n_ctx=8, d_vocab=11, layer_norm=True,
                     act="gelu")
    torch.manual_seed(seed)
    m = TinyTransformer(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias") or ".ln" in name or name.startswith("ln"):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return m.eval()


def _ln(ln: torch.nn.LayerNorm, x: Tensor) -> Tensor:
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


@torch.no_grad()
def forward(model: TinyTransformer, ids: Tensor, swap: dict[tuple[str, str], Tensor] | None = None
            ) -> tuple[Tensor, dict[str, Tensor]]:
    """Logits (batch, pos, vocab) and every sender's output (batch, pos, d_model), with the edges
    in `swap` reading the given sender output instead of the sender's own in this run."""
    swap = swap or {}
    cfg = model.cfg
    n, d = ids.shape[1], cfg.d_head
    outs: dict[str, Tensor] = {"input": model.embed.weight[ids] + model.pos_embed.weight[:n]}
    bias = torch.zeros(cfg.d_model)  # the attention output biases written so far

    def read(receiver: str) -> Tensor:
        return bias + sum(swap.get((s, receiver), o) for s, o in outs.items())

    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    for layer, block in enumerate(model.blocks):
        attn, new = block.attn, {}
        for h in range(cfg.n_heads):
            cols = slice(h * d, (h + 1) * d)

            def project(port: str, lin: torch.nn.Linear) -> Tensor:
                x = _ln(block.ln1, read(f"a{layer}.{h}<{port}"))
                return x @ lin.weight[cols].T + lin.bias[cols]  # (batch, pos, d_head)

            q, k, v = project("q", attn.W_Q), project("k", attn.W_K), project("v", attn.W_V)
            scores = (q @ k.transpose(1, 2) / math.sqrt(d)).masked_fill(future, -torch.inf)
            z = scores.softmax(-1) @ v
            new[f"a{layer}.{h}"] = z @ attn.W_O.weight[:, cols].T  # this head's write, without the bias
        outs.update(new)  # heads of one layer do not read one another
        bias = bias + attn.W_O.bias
        x = _ln(block.ln2, read(f"m{layer}<"))
        hidden = torch.nn.functional.gelu(x @ block.mlp.W_in.weight.T + block.mlp.W_in.bias)
        outs[f"m{layer}"] = hidden @ block.mlp.W_out.weight.T + block.mlp.W_out.bias
    logits = _ln(model.ln_final, read("output")) @ model.unembed.weight.T + model.unembed.bias
    return logits, outs


def ablated(model: TinyTransformer, ids: Tensor, kind: str, reference: Tensor | None = None, seed: int = 0
            ) -> dict[str, Tensor]:
    """Each sender's ablated output (prompt, pos, d_model) for a run on `ids`: zero; the mean over
    the reference prompts per position; a reference prompt's output, one row per prompt drawn
    with `seed` (the same row for every sender); or the counterfactual prompt's own (patch)."""
    _, clean = forward(model, ids)
    if kind == "zero":
        return {s: torch.zeros_like(o) for s, o in clean.items()}
    _, ref = forward(model, reference)
    if kind == "patch":
        return ref
    if kind == "mean":
        return {s: o.mean(0, keepdim=True).expand_as(clean[s]) for s, o in ref.items()}
    pick = torch.randint(reference.shape[0], (ids.shape[0],), generator=torch.Generator().manual_seed(seed))
    return {s: o[pick] for s, o in ref.items()}
