"""Head-role scores read known attention patterns correctly."""

import torch

import mechscope as ms
from mechscope.circuits import head_roles, repeated_tokens
from conftest import make_family

N = 6


def _shifted(pattern, shift_for):  # one-hot pattern: query q attends to shift_for(q)
    out = torch.zeros_like(pattern)
    for q in range(pattern.shape[-2]):
        out[..., q, shift_for(q)] = 1.0
    return out


def test_scores_of_imposed_patterns():
    f = make_family("gpt2")
    prev = ms.Replace("blocks.0.attn.hook_pattern", heads=[1],
                      fn=lambda x, ctx: _shifted(x, lambda q: max(q - 1, 0)))
    induct = ms.Replace("blocks.1.attn.hook_pattern", heads=[2],
                        fn=lambda x, ctx: _shifted(x, lambda q: q - N + 1 if q >= N else q))
    bos = ms.Replace("blocks.1.attn.hook_pattern", heads=[3], fn=lambda x, ctx: _shifted(x, lambda q: 0))
    roles = head_roles(f.hf, n=N, batch=4, interventions=[prev, induct, bos])
    assert roles.previous_token[0, 1] == 1.0
    assert roles.induction[1, 2] == 1.0 and roles.duplicate_token[1, 2] == 0.0
    assert roles.bos[1, 3] == 1.0
    # the induction head's previous-token score by hand: q attends to q-1 only when q - N + 1 == q - 1
    # (never for N > 2) or when q < N and q == q - 1 (never): so 0
    assert roles.previous_token[1, 2] == 0.0
    assert roles.top("induction", 1)[0][:2] == (1, 2)
    # the untouched heads of a random model have ordinary, intermediate scores
    assert 0.0 < float(roles.previous_token[0, 0]) < 1.0


def test_probe_tokens_repeat():
    ids = repeated_tokens(50, 5, 3, seed=1, bos=0)
    assert ids.shape == (3, 11) and (ids[:, 0] == 0).all()
    assert torch.equal(ids[:, 1:6], ids[:, 6:])
