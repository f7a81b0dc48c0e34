"""Metrics return one value per prompt and agree with direct computations."""

import pytest
import torch
import torch.nn.functional as F

from mechscope.core import metrics as M

G = torch.Generator().manual_seed(0)
LOGITS = torch.randn(3, 5, 11, generator=G)
IDS = torch.randint(0, 11, (3, 5), generator=G)


def test_logit_diff_and_positions():
    m = M.logit_diff(torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6]))
    want = torch.stack([LOGITS[i, -1, c] - LOGITS[i, -1, w] for i, (c, w) in enumerate([(1, 4), (2, 5), (3, 6)])])
    assert torch.equal(m(LOGITS), want) and m.name == "logit_diff"
    at = M.logit_diff(torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6]), positions=torch.tensor([0, 2, 4]))
    assert at(LOGITS)[1] == LOGITS[1, 2, 2] - LOGITS[1, 2, 5]


def test_next_token_loss_matches_cross_entropy_and_masks_padding():
    m = M.next_token_loss(IDS)
    want = F.cross_entropy(LOGITS[:, :-1].reshape(-1, 11), IDS[:, 1:].reshape(-1), reduction="none").view(3, 4).mean(1)
    torch.testing.assert_close(m(LOGITS), want)
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[0, 3:] = 0  # prompt 0 has 3 real tokens: 2 predictions
    masked = M.next_token_loss(IDS, mask)(LOGITS)
    ce0 = F.cross_entropy(LOGITS[0, :2], IDS[0, 1:3])
    torch.testing.assert_close(masked[0], ce0)
    assert not m.higher_is_better


def test_kl_is_zero_against_itself_and_positive_otherwise():
    kl = M.kl_from(LOGITS)
    torch.testing.assert_close(kl(LOGITS), torch.zeros(3), atol=1e-6, rtol=0)
    other = LOGITS + torch.randn(LOGITS.shape, generator=G)
    assert (kl(other) > 0).all()
    p = LOGITS[:, -1].softmax(-1)
    want = (p * (p.log() - other[:, -1].log_softmax(-1))).sum(-1)
    torch.testing.assert_close(kl(other), want, atol=1e-5, rtol=1e-5)


def test_accuracy_logprob_and_shape_check():
    top = LOGITS[:, -1].argmax(-1)
    assert torch.equal(M.accuracy(top)(LOGITS), torch.ones(3))
    torch.testing.assert_close(M.answer_logprob(top)(LOGITS), LOGITS[:, -1].log_softmax(-1).max(-1).values)
    bad = M.Metric("bad", lambda logits: logits.sum())
    with pytest.raises(ValueError, match="one value per prompt"):
        bad(LOGITS)
