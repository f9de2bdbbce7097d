"""train.rank_weight: the pairwise referable-vs-rest ranking term added to any head's loss."""
import math

import numpy as np
import pytest
import torch

from dr_core.models.heads import head_for_loss, num_outputs, referable_logit, to_probs
from dr_core.training.losses import ReferableRankLoss, WithRankLoss, build_loss
from dr_core.evaluation.metrics import referable_score

LOSSES = ["ce", "weighted_ce", "focal", "regression", "ordinal"]


@pytest.mark.parametrize("head", ["classification", "regression", "ordinal"])
def test_referable_logit_is_the_log_odds_of_the_referable_probability(head):
    torch.manual_seed(0)
    outputs = torch.randn(64, num_outputs(head, 5)) * 2
    if head == "ordinal":  # a non-increasing cumulative curve, where to_probs is exact
        outputs = outputs.sort(dim=1, descending=True).values
    if head == "regression":  # grades 0..4, most within a grade of a boundary
        outputs = outputs * 0.5 + 2
    for g in (1, 2, 4):
        p = referable_score(to_probs(head, outputs, 5).double().numpy(), g)
        ok = (p > 1e-4) & (p < 1 - 1e-4)  # float32 probabilities lose the log-odds beyond that
        expected = np.log(p[ok]) - np.log1p(-p[ok])
        got = referable_logit(head, outputs, 5, g).double().numpy()[ok]
        assert ok.sum() > 20
        np.testing.assert_allclose(got, expected, atol=1e-3)


def test_regression_logit_rises_about_four_nats_per_grade_near_the_boundary():
    z = referable_logit("regression", torch.tensor([[1.5], [2.0], [1.0]]), 5, 2)
    assert z[0].abs() < 1e-4
    assert z[1].item() == pytest.approx(2.0, abs=0.2) and z[2].item() == pytest.approx(-2.0, abs=0.2)


def test_rank_loss_is_log2_on_ties_and_falls_as_the_referable_photos_rise():
    loss = ReferableRankLoss("regression", 5, 2)
    y = torch.tensor([0, 1, 2, 4])
    tied = torch.full((4, 1), 1.5)
    assert loss(tied, y).item() == pytest.approx(math.log(2), abs=1e-5)
    ordered = torch.tensor([[0.0], [1.0], [2.0], [4.0]])
    reversed_ = torch.tensor([[4.0], [2.0], [1.0], [0.0]])
    assert loss(ordered, y) < 0.05 < math.log(2) < loss(reversed_, y)


def test_rank_loss_matches_the_mean_over_pairs():
    torch.manual_seed(1)
    logits, y = torch.randn(7, 5), torch.tensor([0, 3, 1, 2, 0, 0, 4])
    z = referable_logit("classification", logits, 5, 2).tolist()
    pairs = [(i, j) for i in range(7) for j in range(7) if y[i] >= 2 > y[j]]
    expected = sum(math.log1p(math.exp(z[j] - z[i])) for i, j in pairs) / len(pairs)
    assert ReferableRankLoss("classification", 5, 2)(logits, y).item() == pytest.approx(expected, rel=1e-5)


def test_a_batch_of_one_kind_has_no_pair_and_still_backpropagates():
    outputs = torch.randn(5, 1, requires_grad=True)
    loss = ReferableRankLoss("regression", 5, 2)(outputs, torch.zeros(5, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(outputs.grad, torch.zeros(5, 1))


def test_the_gradient_lifts_referable_photos_and_lowers_the_rest():
    outputs = torch.zeros(4, 4, requires_grad=True)  # ordinal, K-1 = 4 cumulative logits
    ReferableRankLoss("ordinal", 5, 2)(outputs, torch.tensor([0, 1, 2, 3])).backward()
    g = outputs.grad[:, 1]  # o_2, the logit of P(grade >= 2)
    assert (g[:2] > 0).all() and (g[2:] < 0).all()  # descent lowers the first two, raises the last two
    assert outputs.grad[:, [0, 2, 3]].abs().sum() == 0


@pytest.mark.parametrize("loss", LOSSES)
def test_rank_weight_adds_the_ranking_term_and_zero_keeps_the_plain_loss(loss):
    torch.manual_seed(2)
    outputs, y = torch.randn(8, num_outputs(head_for_loss(loss), 5)), torch.tensor([0, 1, 2, 3, 4, 0, 2, 1])
    plain = build_loss(loss, np.ones(5))
    assert not isinstance(plain, WithRankLoss)
    both = build_loss(loss, np.ones(5), rank_weight=0.5, num_classes=5, referable_grade=2)
    rank = ReferableRankLoss(head_for_loss(loss), 5, 2)(outputs, y)
    assert both(outputs, y).item() == pytest.approx(plain(outputs, y).item() + 0.5 * rank.item(), rel=1e-6)


def test_bad_rank_settings_fail_clearly():
    with pytest.raises(ValueError, match="rank_weight must be >= 0"):
        build_loss("ce", rank_weight=-1)
    with pytest.raises(ValueError, match=r"referable_grade must be in 1..4, got 5"):
        ReferableRankLoss("ce", 5, 5)

