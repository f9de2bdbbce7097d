import albumentations as A
import numpy as np
import pytest

from dr_core.data.augment import build_transforms

MEAN = STD = (0.5, 0.5, 0.5)


def _disc(size: int = 64) -> np.ndarray:
    """A bright disc with a dark lesion-like spot: augmentation has structure to move."""
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size, 3), np.uint8)
    img[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.45) ** 2] = (200, 110, 60)
    img[size // 3:size // 3 + 5, size // 2:size // 2 + 5] = (40, 20, 10)
    return img


def _op(compose: A.Compose, kind: type) -> A.BasicTransform:
    ops = [t for t in compose.transforms if isinstance(t, kind)]
    assert len(ops) == 1
    return ops[0]


def test_evaluation_transform_is_deterministic_and_normalised():
    t = build_transforms(32, MEAN, STD, "none")
    a, b = t(image=_disc())["image"], t(image=_disc())["image"]
    assert a.shape == (32, 32, 3) and np.array_equal(a, b)
    assert a.min() >= -1.0 and a.max() <= 1.0


def test_unknown_level_and_bad_strength_are_refused():
    with pytest.raises(ValueError, match="'strong'"):
        build_transforms(32, MEAN, STD, "strong")
    with pytest.raises(ValueError, match="strength must be > 0, got 0"):
        build_transforms(32, MEAN, STD, "advanced", strength=0)


def test_strength_scales_ranges_and_caps_probabilities():
    default = build_transforms(32, MEAN, STD, "advanced")
    assert repr(build_transforms(32, MEAN, STD, "advanced", strength=1.0)) == repr(default)
    assert _op(default, A.Affine).scale["x"] == pytest.approx((0.9, 1.1))
    strong = build_transforms(32, MEAN, STD, "advanced", strength=2.0)
    assert _op(strong, A.Affine).scale["x"] == pytest.approx((0.8, 1.2))
    assert _op(strong, A.RandomBrightnessContrast).brightness_limit == pytest.approx((-0.3, 0.3))
    assert _op(strong, A.HueSaturationValue).p == pytest.approx(0.6)
    assert _op(build_transforms(32, MEAN, STD, "advanced", strength=10.0), A.CoarseDropout).p == 1.0


def _hist(x: np.ndarray) -> np.ndarray:
    return np.histogram(x, bins=32, range=(-1, 1))[0]


def test_stronger_augmentation_changes_intensities_more():
    base = _hist(build_transforms(64, MEAN, STD, "none")(image=_disc())["image"])

    def mean_change(strength: float) -> float:
        t = build_transforms(64, MEAN, STD, "advanced", strength=strength)
        t.set_random_seed(0)
        # intensity histograms: flips and rotation barely move them, colour, contrast and noise do
        return float(np.mean([np.abs(_hist(t(image=_disc())["image"]) - base).sum() for _ in range(200)]))

    assert mean_change(2.0) > 1.2 * mean_change(1.0)
