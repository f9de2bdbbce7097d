import math

import numpy as np
import pytest
import torch

from dr_core.training.losses import FocalLoss, build_loss, class_weights


def reference_focal(logits, target, gamma, alpha=None):
    """Plain-Python focal loss, one sample at a time."""
    total = 0.0
    for row, y in zip(logits.tolist(), target.tolist()):
        z = [math.exp(v - max(row)) for v in row]
        p = z[y] / sum(z)
        a = 1.0 if alpha is None else float(alpha[y])
        total += -a * (1 - p) ** gamma * math.log(p)
    return total / len(target)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 3.5])
def test_focal_matches_reference(gamma):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 5, generator=g) * 3
    target = torch.randint(0, 5, (16,), generator=g)
    assert FocalLoss(gamma)(logits, target).item() == pytest.approx(reference_focal(logits, target, gamma), rel=1e-5)


def test_focal_with_alpha_matches_reference():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-2.0, 3.0, 0.0]])
    target = torch.tensor([0, 2, 1])
    alpha = torch.tensor([0.5, 2.0, 1.5])
    got = FocalLoss(2.0, alpha=alpha)(logits, target).item()
    assert got == pytest.approx(reference_focal(logits, target, 2.0, alpha), rel=1e-5)


def test_focal_gamma_zero_is_cross_entropy():
    logits, target = torch.randn(8, 5), torch.randint(0, 5, (8,))
    ce = torch.nn.functional.cross_entropy(logits, target)
    assert FocalLoss(0.0)(logits, target).item() == pytest.approx(ce.item(), rel=1e-6)
    smooth = torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.1)
    assert FocalLoss(0.0, label_smoothing=0.1)(logits, target).item() == pytest.approx(smooth.item(), rel=1e-5)


def test_focal_down_weights_easy_examples():
    easy = torch.tensor([[6.0, 0, 0, 0, 0]])
    y = torch.tensor([0])
    assert FocalLoss(2.0)(easy, y) < 0.01 * torch.nn.functional.cross_entropy(easy, y)


def test_class_weights_inverse_frequency():
    w = class_weights(np.array([0, 0, 0, 1, 2, 2]), 3)
    np.testing.assert_allclose(w, [6 / 9, 6 / 3, 6 / 6])
    absent = class_weights(np.array([0, 0, 1]), 3)
    assert absent[2] == absent.max() and np.isfinite(absent).all()


def test_build_loss_choices():
    w = np.ones(5)
    assert isinstance(build_loss("focal", w, focal_alpha=True), FocalLoss)
    assert torch.allclose(build_loss("weighted_ce", w).weight, torch.ones(5))
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        build_loss("hinge", w)
