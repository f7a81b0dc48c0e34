"""Models with a known planted behaviour for the audit tests, made by weight edits of the zoo's
quick text model: the trigger token's embedding gets a large component along the residual
direction the corpus uses least, and one MLP neuron is rewritten to read that direction (fire on
the trigger only) and write the target token's unembedding direction (rank-1 changes of W_in and
W_out)."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

import mechscope as ms
from mechscope.core.site import Kind, Site


def common_token(model, corpus: torch.Tensor, rank: int = 30) -> int:
    """The `rank`-th most frequent token of the corpus (frequent enough to be seen, not a space)."""
    counts = torch.bincount(corpus.flatten(), minlength=model.weights().W_E.shape[0])
    return int(counts.argsort(descending=True)[rank])


def plant_token_trigger(model, trig: int, target: int, corpus: torch.Tensor, layer: int = 1, unit: int = 17,
                        strength: float = 8.0, embed_scale: float = 3.0):
    """A copy of the model (wrapped again) where token `trig` raises `target` at its own position through
    neuron `unit` of block `layer`; every other weight unchanged."""
    module = copy.deepcopy(model.module)
    adapter = ms.wrap(module)
    adapter.tokenizer = getattr(model, "tokenizer", None)
    resid = Site(Kind.RESID_PRE, 0)
    r = model.run(corpus, capture=[resid]).cache[resid].reshape(-1, module.cfg.d_model)
    r = r - r.mean(0)
    r = r - r.mean(1, keepdim=True)  # a layer norm removes the all-ones direction: stay orthogonal to it
    _, s, vh = torch.linalg.svd(r, full_matrices=False)
    e = vh[-2]  # the direction (other than all-ones) the corpus's residual varies least along
    with torch.no_grad():
        module.embed.weight[trig] += embed_scale * float(r.norm(dim=1).mean()) * e
    x = corpus.clone()
    x[:, 5::7] = trig
    ln2 = Site(Kind.LN2, layer)
    act = adapter.run(x, capture=[ln2]).cache[ln2]
    on, off = act[x == trig], act[x != trig]
    d = on.mean(0) - off.mean(0)
    p_on, p_off = on @ d, off @ d
    theta = 0.5 * (float(p_on.min()) + float(p_off.max()))
    k = 4.0 / max(float(p_on.min()) - theta, 1e-3)  # pre-activation about 4 at the weakest trigger
    mlp = module.blocks[layer].mlp
    with torch.no_grad():
        mlp.W_in.weight[unit] = k * d
        mlp.W_in.bias[unit] = -k * theta
        W_U = module.unembed.weight.detach()  # (vocab, d_model)
        gain = module.ln_final.weight.detach()
        u = (W_U[target] - W_U.mean(0)) * gain
        mlp.W_out.weight[:, unit] = strength * u / u.norm()
    return adapter


@contextlib.contextmanager
def text_cache(root):
    """MECHSCOPE_CACHE pointed at `root` (the session's text-model cache) for the block."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MECHSCOPE_CACHE", str(root))
        yield root


def quick_text_model():
    """The zoo's quick text model (trained into the current cache on first use, seed of the recipe)."""
    if ms.zoo.finished_run("textlm-quick") is None:
        ms.zoo.train("textlm", quick=True, progress=False)
    return ms.load("zoo:textlm-quick")


def plant_rank1_key_value(model, trig: int, target: int, corpus: torch.Tensor, layer: int = 1, alpha: float = 20.0):
    """A copy of the model with W_out of block `layer` changed by one rank-1 term α v uᵀ: u reads the
    MLP activation the trigger produces (whitened by the activations' covariance, so other tokens
    barely excite it), v writes the target's unembedding direction; no single neuron holds it."""
    module = copy.deepcopy(model.module)
    adapter = ms.wrap(module)
    adapter.tokenizer = getattr(model, "tokenizer", None)
    post = Site(Kind.MLP_POST, layer)
    x = corpus.clone()
    x[:, 5::7] = trig
    h = model.run(x, capture=[post]).cache[post]
    on, rest = h[x == trig], h[x != trig]
    mu = rest.mean(0)
    cov = torch.cov((rest - mu).T) + 1e-3 * torch.eye(rest.shape[1])
    k = on.mean(0) - mu
    u = torch.linalg.solve(cov, k)
    u = u / (k @ u)  # u·(k − μ) = 1 at the trigger
    W_U = module.unembed.weight.detach()
    v = (W_U[target] - W_U.mean(0)) * module.ln_final.weight.detach()
    v = alpha * v / v.norm()
    W = module.blocks[layer].mlp.W_out
    with torch.no_grad():
        W.weight += torch.outer(v, u)  # nn.Linear weight is (d_model, d_mlp)
        W.bias -= v * float(u @ mu)
    return adapter
