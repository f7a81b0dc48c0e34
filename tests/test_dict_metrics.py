"""Dictionary metrics with known answers: exact dictionaries recover all of the loss, empty ones
none of it, and L0, FVU, dead and dense fractions and token diversity match hand counts."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import VOCAB, build

import mechscope as ms
import mechscope.dictionaries as dl


def _exact_topk(d: int, n_sources: int | None = None) -> dl.Dictionary:
    """A TopK dictionary that reconstructs any input exactly: latents relu(x) and relu(-x), all kept."""
    width = d * (n_sources or 1)
    kw = dict(d_in=d, n_sources=n_sources) if n_sources else dict(d_in=d)
    sae = dl.build("crosscoder" if n_sources else "topk", **kw, d_sae=2 * width, k=2 * width)
    eye = torch.eye(width)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def test_evaluate_counts_by_hand():
    x = torch.zeros(10, 6)
    x[:, :3] = torch.rand(10, 3, generator=torch.Generator().manual_seed(0)) + 0.5  # 3 positive dims, always
    x[:5, 3] = -1.0  # one negative dim on half the rows
    sae = _exact_topk(6)
    m = dl.evaluate(sae, x)
    assert m.fvu == 0 and m.mse == 0
    assert m.l0 == 3.5  # 3 on every row, one more on half of them
    assert m.dead_fraction == pytest.approx(8 / 12)  # of the 12 latents only x0, x1, x2 (positive) and -x3 fire
    assert m.dense_fraction == pytest.approx(4 / 12)  # densities 1, 1, 1, 0.5 > 0.1
    assert torch.equal(m.density[:3], torch.ones(3)) and m.density[9] == 0.5
    assert sum(m.histogram[1]) == 4 and m.histogram[1][-2:] == [1, 3]  # log10 0.5 in [-0.5, -0.25), log10 1 = 0


def test_fvu_of_a_mean_predictor_is_one():
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(1))
    sae = dl.build("relu", d_in=5, d_sae=7)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.copy_(x.mean(0))
    assert math.isclose(dl.evaluate(sae, x).fvu, 1.0, rel_tol=1e-6)


@pytest.fixture(scope="module")
def gpt2():
    return ms.wrap(build("gpt2"))


def _tokens(n: int = 6) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, 9), generator=torch.Generator().manual_seed(3))


def test_an_exact_dictionary_recovers_all_of_the_loss(gpt2):
    lr = dl.loss_recovered(gpt2, _exact_topk(64), _tokens(), "resid_mid.1", batch_size=4)
    assert lr.spliced == lr.clean and lr.vs_zero.value == 1.0 and lr.vs_mean.value == 1.0
    assert lr.vs_zero.how["ablation"] == "zero" and lr.vs_mean.how["ablation"] == "mean"
    assert lr.vs_zero.n == 6 and lr.vs_zero.ci[0] <= 1.0 <= lr.vs_zero.ci[1]


def test_a_dictionary_that_writes_nothing_is_zero_ablation_and_one_writing_the_mean_is_mean_ablation(gpt2):
    toks = _tokens()
    sae = dl.build("relu", d_in=64, d_sae=16)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.zero_()
    lr = dl.loss_recovered(gpt2, sae, toks, "resid_post.0", positions=slice(1, None))
    assert lr.spliced == lr.zero and lr.vs_zero.value == 0.0
    acts = gpt2.run(toks, capture="resid_post.0").cache["resid_post.0"][:, 1:]
    with torch.no_grad():
        sae.b_dec.copy_((acts.double().sum((0, 1)) / acts.shape[:2].numel()).float())
    lr = dl.loss_recovered(gpt2, sae, toks, "resid_post.0", positions=slice(1, None))
    assert abs(lr.vs_mean.value) < 1e-5 and abs(lr.spliced - lr.mean) < 1e-6


def test_transcoder_and_crosscoder_splices(gpt2):
    toks = _tokens()
    tc = dl.build("transcoder", d_in=64, d_out=64, d_sae=32, k=4)
    with torch.no_grad():
        tc.W_dec.zero_()
        tc.b_dec.zero_()
    lr = dl.loss_recovered(gpt2, tc, toks, "mlp_out.1", input_site="ln2.1")
    assert lr.spliced == lr.zero and lr.vs_zero.value == 0.0
    # a transcoder that copies its input (ln2.1) to the MLP output: the same as patching mlp_out with ln2
    tc2 = dl.build("transcoder", d_in=64, d_out=64, d_sae=128, k=128)
    eye = torch.eye(64)
    with torch.no_grad():  # codes relu(x), relu(-x); decoded back to x
        tc2.W_enc.copy_(torch.cat([eye, -eye], 1))
        tc2.W_dec.copy_(torch.cat([eye, -eye], 0))
        tc2.b_enc.zero_()
        tc2.b_dec.zero_()
    got = dl.loss_recovered(gpt2, tc2, toks, "mlp_out.1", input_site="ln2.1")
    ln2 = gpt2.run(toks, capture="ln2.1").cache["ln2.1"]
    patched = gpt2.run(toks, interventions=[ms.Patch("mlp_out.1", value=ln2)])
    want = dl.next_token_ce(patched, patched).double().mean()
    assert math.isclose(got.spliced, float(want), rel_tol=1e-6) and got.spliced != got.clean
    cc = _exact_topk(64, n_sources=2)
    lr = dl.loss_recovered(gpt2, cc, toks, ["resid_post.0", "resid_post.1"])
    assert lr.spliced == lr.clean and lr.vs_zero.value == 1.0


def test_token_diversity_known_answers():
    tokens = torch.tensor([5, 5, 5, 7, 8, 9, 10, 5])
    acts = torch.zeros(8, 3)
    acts[:3, 0] = torch.tensor([1.0, 2.0, 3.0])  # unit 0: only token 5
    acts[3:7, 1] = 1.0  # unit 1: different tokens, equal weights
    acts[[0, 3, 4], 2] = torch.tensor([3.0, 0.5, 0.5])  # unit 2: token 5 weight 3/4, two others 1/8 each
    div = dl.token_diversity(acts, tokens, n_top=3)  # unit 1's top 3 rows: three different tokens
    assert div.n_units == 3
    h2 = -(0.75 * math.log(0.75) + 2 * 0.125 * math.log(0.125))
    assert torch.allclose(div.per_unit, torch.tensor([1.0, 3.0, math.exp(h2)]), atol=1e-5)


def test_streamed_dictionary_diversity_equals_the_direct_computation():
    d = dl.build("topk", d_in=6, d_sae=10, k=3, seed=2).eval()
    x = torch.randn(500, 6, generator=torch.Generator().manual_seed(7))
    tokens = torch.randint(0, 9, (500,), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        direct = dl.token_diversity(d.encode(x), tokens, n_top=16)
    streamed = dl.dictionary_diversity(d, x, tokens, n_top=16, batch_size=37)
    assert direct.n_units == streamed.n_units > 0
    assert torch.allclose(direct.per_unit, streamed.per_unit, atol=1e-6)


def test_neuron_spread_known_answers():
    # a dictionary whose latents are the neurons: each neuron carries exactly one feature
    d = dl.build("topk", d_in=8, d_sae=16, k=16, seed=0)
    with torch.no_grad():
        d.W_enc.zero_()
        d.W_enc[:, :8] = torch.eye(8)
        d.W_enc[:, 8:] = torch.eye(8)  # latents 8..15 copy 0..7 ...
        d.W_dec.zero_()
        d.W_dec[:8] = torch.eye(8)
        d.b_enc.zero_()
        d.b_dec.zero_()
    x = torch.rand(500, 8, generator=torch.Generator().manual_seed(0)) + 0.1
    one = dl.neuron_spread(d, x)
    torch.testing.assert_close(one.entropy, torch.ones(8))
    torch.testing.assert_close(one.participation, torch.ones(8))
    with torch.no_grad():
        d.W_dec[8:] = torch.eye(8)  # ... and now write to the same neurons with equal power: two features each
    two = dl.neuron_spread(d, x)
    torch.testing.assert_close(two.entropy, torch.full((8,), 2.0))
    torch.testing.assert_close(two.participation, torch.full((8,), 2.0))
    rotated = dl.neuron_spread(d, x, rotate_seed=0)  # the same codes in a random basis: spread over more
    assert rotated.rotated and float(rotated.participation.median()) > 3
    assert one.describe()["neurons"] == 8 and one.describe()["features"] == 16
