import json

import numpy as np
import pytest
import torch

from conftest import write_fake_cache  # noqa: F401  (fixture module)
from dr_core.config import ConfigError, params_from_dict
from dr_core.data.batch_augment import BatchAugment
from dr_core.data.loaders import make_loaders
from dr_core.training.fit import fit
from test_augment import _disc
from test_train import tiny

MEAN = STD = (0.5, 0.5, 0.5)


def _batch(n: int = 8, size: int = 64) -> torch.Tensor:
    return torch.from_numpy(np.stack([_disc(size)] * n)).permute(0, 3, 1, 2).contiguous()


def test_none_level_only_normalises():
    out = BatchAugment(MEAN, STD, "none")(_batch())
    expected = (_batch().float() / 255 - 0.5) / 0.5
    assert out.dtype == torch.float32 and torch.allclose(out, expected)


def test_each_photo_gets_its_own_draws_within_the_pixel_range():
    aug = BatchAugment(MEAN, STD, "advanced")
    out = aug(_batch(16))
    assert out.shape == (16, 3, 64, 64)
    assert out.min() >= -1.0 - 1e-6 and out.max() <= 1.0 + 1e-6  # clamped to [0, 1] before normalising
    flat = out.flatten(1)
    distinct = {tuple(row[:: 97].tolist()) for row in flat}
    assert len(distinct) >= 14  # 16 copies of one photo, (almost) all transformed differently


def test_an_epoch_seed_repeats_the_draws_and_another_seed_does_not():
    aug = BatchAugment(MEAN, STD, "advanced")
    aug.set_random_seed(7)
    a = torch.cat([aug(_batch()), aug(_batch())])
    aug.set_random_seed(7)
    b = torch.cat([aug(_batch()), aug(_batch())])
    aug.set_random_seed(8)
    c = aug(_batch())
    assert torch.equal(a, b) and not torch.equal(a[:8], c)
    assert not torch.equal(a[:8], a[8:])  # the second batch of an epoch draws anew


def test_geometry_moves_the_lesion_but_keeps_the_disc():
    aug = BatchAugment(MEAN, STD, "basic")
    base = _batch(64)
    out = aug(base) * 0.5 + 0.5
    lit = (out.mean(1) > 0.2).float().mean((1, 2))  # share of the frame inside the fundus disc (brightness: +-0.15)
    ref = (base.float().mean(1) / 255 > 0.2).float().mean((1, 2))
    assert torch.allclose(lit, ref, atol=0.15)  # rotation and +-10% zoom: the disc stays about the same size
    dark = [(o.mean(0) < 0.3) & (o.mean(0) > 0.0) for o in out]  # the lesion: dark inside the disc
    positions = {tuple(torch.nonzero(d).float().mean(0).round().tolist()) for d in dark if d.any()}
    assert len(positions) > 20  # it lands in many places: flips and rotations differ per photo


def test_stronger_augmentation_changes_intensities_more():
    base = _batch(64)
    plain = BatchAugment(MEAN, STD, "none")(base)

    def change(strength: float) -> float:
        aug = BatchAugment(MEAN, STD, "advanced", strength)
        aug.set_random_seed(0)
        out = aug(base)
        # mean intensity per photo: geometry barely moves it, brightness, contrast and colour do
        return float((out.mean((1, 2, 3)) - plain.mean((1, 2, 3))).abs().mean())

    assert change(2.0) > 1.3 * change(1.0)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="'strong'"):
        BatchAugment(MEAN, STD, "strong")
    with pytest.raises(ValueError, match="strength must be > 0"):
        BatchAugment(MEAN, STD, strength=0)
    with pytest.raises(ValueError, match="uint8 batch"):
        BatchAugment(MEAN, STD)(_batch().float())


def test_augment_on_is_validated():
    with pytest.raises(ConfigError, match="train.augment_on"):
        params_from_dict({"train": {"augment_on": "gpu"}})


def test_device_augmentation_leaves_the_loader_uint8(fake_cache):
    params = tiny(augment_on="device")
    loaders = make_loaders(fake_cache, params, MEAN, STD, torch.device("cpu"))
    x, _ = next(iter(loaders.train))
    assert x.dtype == torch.uint8 and x.shape[1:] == (3, 48, 48)
    assert isinstance(loaders.augment, BatchAugment)
    vx, _ = next(iter(loaders.val))
    assert vx.dtype == torch.float32  # val is normalised in the loader as before
    assert make_loaders(fake_cache, tiny(), MEAN, STD, torch.device("cpu")).augment is None


def test_training_with_device_augmentation_repeats_exactly(fake_cache, tmp_path):
    params = tiny(augment_on="device", epochs_stage2=1)
    a = fit(fake_cache, tmp_path / "a", tmp_path / "la", params)
    b = fit(fake_cache, tmp_path / "b", tmp_path / "lb", params)
    ha = json.loads((tmp_path / "a" / "training_history.json").read_text())["history"]
    hb = json.loads((tmp_path / "b" / "training_history.json").read_text())["history"]
    workers = fit(fake_cache, tmp_path / "w", tmp_path / "lw", tiny(epochs_stage2=1))
    hw = json.loads((tmp_path / "w" / "training_history.json").read_text())["history"]
    assert ha == hb and a == b
    assert ha[0]["train/loss"] != hw[0]["train/loss"]  # the batches were augmented on the device, not by workers
