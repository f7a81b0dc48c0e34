"""mechscope diff: KL per token, its aggregation, steering with the activation difference, findings
against a control, and the atomic output directory."""

import copy
import json

import pytest
import torch

from mechscope.core.site import Kind, Site
from mechscope.diff.activations import activation_diff, lens, mean_difference, steering_kl, steering_kls
from mechscope.diff.behaviour import behaviour_diff
from mechscope.diff.corpus import from_ids
from mechscope.diff.report import write_out
from mechscope.diff.study import diff
from mechscope.models import wrap

from test_diff_weights import tiny


def pair(seed=0, scale=0.05):
    a = tiny(seed)
    b = copy.deepcopy(a)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return a, b


def ids(n=12, T=10, seed=0):
    return torch.randint(0, 40, (n, T), generator=torch.Generator().manual_seed(seed))


def test_kl_per_token_equals_a_direct_computation():
    a, b = pair()
    x = ids()
    res = behaviour_diff(wrap(a), wrap(b), from_ids(x), batch=5, min_count=2, progress=False, n_boot=50)
    with torch.no_grad():
        pa, pb = a(x).double().softmax(-1), b(x).double().softmax(-1)
    for i in range(x.shape[0]):
        for t in range(x.shape[1]):
            direct = torch.distributions.kl_divergence(torch.distributions.Categorical(probs=pa[i, t]),
                                                       torch.distributions.Categorical(probs=pb[i, t]))
            assert float(res.kl[i, t]) == pytest.approx(float(direct), rel=1e-6, abs=1e-12)
    assert res.overall.value == pytest.approx(float(res.kl.mean()))
    # the tables against brute force: every context's mean KL, and the ranking by it
    brute = {}
    for i in range(x.shape[0]):
        for t in range(x.shape[1]):
            brute.setdefault(int(x[i, t]), []).append(float(res.kl[i, t]))
    for k in res.by_context:
        assert k.count == len(brute[k.key[0]]) and k.mean_kl == pytest.approx(sum(brute[k.key[0]]) / k.count)
    eligible = sorted((sum(v) / len(v) for v in brute.values() if len(v) >= 2), reverse=True)
    assert [k.mean_kl for k in res.by_context] == pytest.approx(eligible[:len(res.by_context)])
    bigrams = {}
    for i in range(x.shape[0]):
        for t in range(1, x.shape[1]):
            bigrams.setdefault((int(x[i, t - 1]), int(x[i, t])), []).append(float(res.kl[i, t]))
    for k in res.by_bigram:
        assert k.mean_kl == pytest.approx(sum(bigrams[k.key]) / len(bigrams[k.key]))
    # what B predicts more there: the mean of p_B - p_A over the occurrences, computed directly
    top = res.by_context[0]
    m = x == top.key[0]
    rise = (pb[m] - pa[m]).mean(0)
    assert top.rises[0][0] == int(rise.argmax()) and top.rises[0][1] == pytest.approx(float(rise.max()))
    # read on fewer windows: the mean over the key's positions in those windows (its examples' and
    # `detail_windows` evenly spaced ones)
    few = behaviour_diff(wrap(a), wrap(b), from_ids(x), batch=5, min_count=2, progress=False, n_boot=50,
                         detail_windows=2)
    top = few.by_context[0]
    ex = {e.window for k in few.by_context + few.by_bigram for e in k.examples}
    hit = torch.zeros(x.shape[0], dtype=torch.bool)  # the windows any top key is in
    for k in few.by_context:
        hit |= (x == k.key[0]).any(1)
    for k in few.by_bigram:
        hit |= ((x[:, :-1] == k.key[0]) & (x[:, 1:] == k.key[1])).any(1)
    rows = hit.nonzero().flatten()
    keep = sorted(ex | {int(rows[0]), int(rows[-1])})
    m = torch.zeros_like(x, dtype=torch.bool)
    m[keep] = x[keep] == top.key[0]
    rise = (pb[m] - pa[m]).mean(0)
    assert top.rises[0][1] == pytest.approx(float(rise.max())) and len(keep) < len(rows)


def test_identical_networks_differ_nowhere():
    a = tiny(3)
    res = behaviour_diff(wrap(a), wrap(copy.deepcopy(a)), from_ids(ids()), progress=False, n_boot=20)
    assert float(res.kl.abs().max()) == 0.0
    full = diff(wrap(a), wrap(copy.deepcopy(a)), corpus=from_ids(ids()), progress=False)
    assert not [f for f in full.findings if f.kind == "weight"]
    assert all(s.norm == 0 and s.closed.value == 0 and s.closed.ci is None for s in full.activations)


def test_steering_with_the_exact_difference_closes_all_of_the_kl():
    # B = A with a constant c added to the output of block 0's MLP: the residual entering block 1
    # differs by exactly c at every position, and nothing earlier differs
    a = tiny(4)
    b = copy.deepcopy(a)
    c = torch.randn(16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        b.blocks[0].mlp.W_out.bias.add_(c)
    A, B = wrap(a), wrap(b)
    x = ids(8, 10, 2)
    deltas = mean_difference(A, B, x, [Site(Kind.RESID_PRE, 0), Site(Kind.RESID_PRE, 1)], n_pos=3)
    assert torch.allclose(deltas[Site(Kind.RESID_PRE, 1)][0], c, atol=1e-5)
    assert float(deltas[Site(Kind.RESID_PRE, 0)][0].abs().max()) == 0.0
    before, after = steering_kl(A, B, x, Site(Kind.RESID_PRE, 1), c)
    assert float(before.sum()) > 1e-3 and float(after.sum()) < 1e-9 * float(before.sum()) + 1e-10
    # half the shift closes part of it, none of it closes nothing
    _, half = steering_kl(A, B, x, Site(Kind.RESID_PRE, 1), c / 2)
    assert 0 < float(half.sum()) < float(before.sum())
    sites = activation_diff(A, B, from_ids(x), n_pos=3, progress=False)
    by = {s.site: s for s in sites}
    assert by[Site(Kind.RESID_PRE, 1)].closed.value == pytest.approx(1.0, abs=1e-6)
    assert by[Site(Kind.RESID_PRE, 0)].closed.value == 0.0
    some = activation_diff(A, B, from_ids(x), n_pos=3, progress=False, steer_sites=2)  # the first and the last
    assert [s.closed is not None for s in some] == [True, False, True]
    assert [s.norm for s in some] == [s.norm for s in sites]
    # several sites in one pass give each site's own figures
    s0, s1 = Site(Kind.RESID_PRE, 0), Site(Kind.RESID_PRE, 1)
    _, both = steering_kls(A, B, x, {s1: c / 2, s0: c})
    assert torch.equal(both[s1], half) and torch.equal(both[s0], steering_kl(A, B, x, s0, c)[1])
    few = activation_diff(A, B, from_ids(x), n_pos=3, progress=False, steer_windows=3)  # windows 0, 4 and 7
    assert few[1].closed.n == 3 and few[1].closed.value == pytest.approx(1.0, abs=1e-6)
    assert few[1].kl_before == pytest.approx(float(before[[0, 4, 7]].sum()) / 30)
    # the lens of c is B's unembedding of B's final norm of c, less the lens of zero
    with torch.no_grad():
        want = b.unembed(b.ln_final(c)) - b.unembed(b.ln_final(torch.zeros(16)))
    assert torch.allclose(lens(B, c), want, atol=1e-5)


def test_findings_are_measured_against_the_control():
    a, b = pair(5, 0.2)
    _, ctl = pair(5, 0.02)
    corpus = from_ids(ids(16, 10, 3))
    control = diff(wrap(a), wrap(ctl), corpus=corpus, progress=False)
    assert control.control is None and not control.above
    res = diff(wrap(a), wrap(b), corpus=corpus, control=control, progress=False)
    for f in res.findings:
        ref = control.reference(f.ref)
        if f.ref[0] in ("context", "bigram"):
            ref = max(ref, control.behaviour.overall.value)
        assert f.threshold == pytest.approx(1.5 * ref)
    strengths = [f.strength for f in res.findings]
    assert strengths == sorted(strengths, reverse=True)
    assert res.above  # ten times the perturbation of the control
    data = res.to_json()
    json.dumps(data)
    assert data["n_above_threshold"] == len(res.above)
    page = res.to_html()
    assert "<script" not in page and "#" in page


def test_html_escapes_token_text():
    a, b = pair(6)
    res = diff(wrap(a), wrap(b), corpus=from_ids(ids()), progress=False)
    bad = "<img src=x onerror=alert(1)>"
    res.a = bad
    for f in res.findings:
        f.title = "<b>" + f.title
        f.evidence["token"] = bad
        f.evidence["examples"] = [{"context": bad, "a_top": bad, "b_top": bad, "kl": 0.5}]
    page = res.to_html()
    assert "<img" not in page and "<b>" not in page and "&lt;img" in page


def test_out_directory_is_written_whole_or_not_at_all(tmp_path):
    out = tmp_path / "report"
    with pytest.raises(TypeError):
        write_out(out, {"a.txt": "first", "b.json": {"x": object()}})
    assert not out.exists() and list(tmp_path.iterdir()) == []
    write_out(out, {"a.txt": "first", "b.json": {"x": 1}})
    assert (out / "a.txt").read_text() == "first" and json.loads((out / "b.json").read_text()) == {"x": 1}
    with pytest.raises(TypeError):  # a failed rewrite leaves the old report as it was
        write_out(out, {"a.txt": "second", "b.json": {"x": object()}})
    assert (out / "a.txt").read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    write_out(out, {"c.txt": "third"})
    assert sorted(p.name for p in out.iterdir()) == ["c.txt"]
