"""mechscope diff's crosscoder: a direction planted in B on one token becomes the most B-leaning
latent, it fires on that token, and latent scaling says A lacks it."""

import copy

import pytest
import torch

from mechscope.core.site import Kind, Site
from mechscope.diff.corpus import from_ids
from mechscope.diff.crosscoder_diff import crosscoder_diff
from mechscope.models import wrap

from test_diff_weights import tiny


@pytest.mark.parametrize("batch_topk", [False, True])
def test_planted_direction_is_the_most_b_leaning_latent(batch_topk):
    a = tiny(7)
    token = 11
    with torch.no_grad():  # a token A barely represents ...
        a.embed.weight[token] *= 0.05
    b = copy.deepcopy(a)
    v = torch.randn(16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():  # ... for which B writes a new direction
        b.embed.weight[token] += 6 * v / v.norm() * b.embed.weight.norm(dim=1).mean()
    ids = torch.randint(0, 40, (300, 12), generator=torch.Generator().manual_seed(4))
    # read at the embeddings (token + position), where the planted direction is all that differs
    res = crosscoder_diff(wrap(a), wrap(b), from_ids(ids), site=Site(Kind.RESID_PRE, 0), d_sae=64, k=4, epochs=30,
                          batch_size=512, batch_topk=batch_topk, progress=False)
    assert res.fvu < 0.2
    first = res.b_leaning[0]  # the most B-leaning latent is the planted direction's
    assert sum(t == token for t in first.fires_on) >= 8, [(x.relative_norm, x.fires_on) for x in res.b_leaning]
    # latent scaling: A's activations hold little of it. BatchTopK gives the planted token, whose
    # activation in B is large, three latents that each also carry part of the shared position
    # embedding, so A holds more of each (ν 0.43 for the first, against 0.17 with TopK)
    assert abs(first.nu) < (0.5 if batch_topk else 0.3)
    assert res.shares["shared"] > 0.8  # the rest of the dictionary is shared
