import numpy as np
import pytest
import torch
from torch import nn

from dr_core.training.engine import StepContext, run_epoch
from dr_core.models.heads import head_for_loss, num_outputs
from dr_core.training.losses import build_loss
from dr_core.training.mixup import mix_batch, mixed_loss


def test_alpha_zero_returns_the_batch_unchanged():
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    mixed, y_other, lam = mix_batch(x, y, 0.0)
    assert mixed is x and y_other is y and lam == 1.0


def test_each_image_is_blended_with_its_partner_by_the_drawn_weight():
    torch.manual_seed(0)
    y = torch.arange(16)
    x = y.float().view(16, 1, 1, 1).expand(16, 3, 4, 4).clone()  # pixel value = row index
    mixed, y_other, lam = mix_batch(x, y, 0.4)
    assert 0.0 < lam < 1.0
    assert sorted(y_other.tolist()) == list(range(16)) and not torch.equal(y_other, y)
    expected = lam * y.float() + (1 - lam) * y_other.float()
    assert torch.allclose(mixed[:, :, 0, 0], expected.view(16, 1).expand(16, 3))
    assert torch.equal(x[:, 0, 0, 0], y.float())  # the loader's batch is not modified in place


def test_the_draw_repeats_under_the_same_seed():
    x, y = torch.randn(8, 3, 4, 4), torch.arange(8)
    torch.manual_seed(5)
    first = mix_batch(x, y, 0.4)
    torch.manual_seed(5)
    second = mix_batch(x, y, 0.4)
    assert first[2] == second[2] and torch.equal(first[1], second[1]) and torch.equal(first[0], second[0])


def test_mixed_loss_weights_the_two_targets():
    out, y, y2 = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 4.0])
    mse = nn.MSELoss()  # against y: (1 + 4) / 2; against y2: (0 + 4) / 2
    assert mixed_loss(mse, out, y, y2, 1.0) == pytest.approx(2.5)
    assert mixed_loss(mse, out, y, y2, 0.25) == pytest.approx(0.25 * 2.5 + 0.75 * 2.0)


def test_mix_batch_rejects_a_negative_alpha():
    with pytest.raises(ValueError, match="mixup alpha must be >= 0, got -1"):
        mix_batch(torch.zeros(2, 3, 4, 4), torch.zeros(2), -1)


class Recorder(nn.Module):
    """A linear grader that keeps the inputs it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 5)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("train", [True, False])
def test_run_epoch_mixes_training_batches_only(train):
    torch.manual_seed(0)
    x, y = torch.randn(12, 3, 4, 4), torch.arange(12) % 5
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=6)
    model = Recorder()
    opt = torch.optim.SGD(model.parameters(), lr=0.1) if train else None
    res = run_epoch(model, loader, nn.CrossEntropyLoss(), StepContext(device=torch.device("cpu"), mixup_alpha=0.4), opt)
    assert torch.equal(torch.cat(model.seen), x) is not train
    assert torch.equal(torch.as_tensor(res.y_true), y)  # metrics are against the real grades


@pytest.mark.parametrize("loss", ["ce", "weighted_ce", "focal", "regression", "ordinal"])
def test_every_head_trains_with_mixup(loss):
    torch.manual_seed(0)
    head = head_for_loss(loss)
    x, y = torch.randn(12, 3, 4, 4), torch.arange(12) % 5
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=6)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, num_outputs(head, 5)))
    before = model[1].weight.detach().clone()
    loss_fn = build_loss(loss, np.ones(5))
    ctx = StepContext(device=torch.device("cpu"), head=head, mixup_alpha=0.4)
    res = run_epoch(model, loader, loss_fn, ctx, torch.optim.SGD(model.parameters(), lr=0.1))
    assert np.isfinite(res.loss) and res.probs.shape == (12, 5)
    assert not torch.equal(model[1].weight, before)
