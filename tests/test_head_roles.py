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


def test_direct_effects_of_heads_through_a_post_attention_norm():
    """Gemma 3 writes each attention output through a norm: a head's direct effect on the predicted
    token's logit is its share of that norm's output (scale frozen), so the heads' effects add up to
    the whole attention output's direct effect, read through the frozen final norm by hand."""
    from mechscope.circuits.head_role_checks import _direct_on_predicted

    f = make_family("gemma3_mqa")
    m, ids = f.model, f.ids
    got = _direct_on_predicted(m, ids)
    L = m.n_layers
    c = ms.run(m, ids, capture=[ms.Site(ms.Kind.ATTN_OUT, l) for l in range(L)]
               + [ms.Site(ms.Kind.RESID_POST, L - 1)]).cache
    w = m.weights()
    resid = c[ms.Site(ms.Kind.RESID_POST, L - 1)].double()
    rms = (resid.pow(2).mean(-1, keepdim=True) + f.hf.model.norm.eps).sqrt()  # the final norm's scale
    U = w.W_U.double() * w.lnf_w.double()[:, None]
    u = U[:, got["pred"]] - U.mean(-1)[:, None, None]  # (d_model, batch, pos)
    for layer in range(L):
        whole = torch.einsum("bpd,dbp->bp", c[ms.Site(ms.Kind.ATTN_OUT, layer)].double() / rms, u)
        torch.testing.assert_close(got["dla"][layer].sum(-1), whole, atol=1e-6, rtol=1e-5)
