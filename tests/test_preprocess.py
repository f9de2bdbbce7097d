"""Deterministic preprocessing on small synthetic fundus images (and a few real ones if present)."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from dr_core.config import PreprocessConfig
from dr_core.data.fundus_crop import fundus_bbox
from dr_core.data.preprocess import (apply_clahe, ben_graham, circular_mask, crop_to_fundus, pad_to_square,
                                preprocess_image, read_fundus, reduction_factor, resize_to_fit)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TOL = 3  # px


def disc_image(h: int = 120, w: int = 160, centre: tuple[int, int] | None = None, radius: int = 50,
               colour: tuple[int, int, int] = (200, 120, 60), vignette: float = 0.0,
               noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """RGB disc on black; ``vignette`` darkens the rim to (1 - vignette) of the centre."""
    rng = np.random.default_rng(seed)
    cx, cy = centre or (w // 2, h // 2)
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (cx, cy), radius, 1, thickness=-1)
    yy, xx = np.mgrid[:h, :w]
    falloff = 1.0 - vignette * np.clip(((xx - cx) ** 2 + (yy - cy) ** 2) / radius ** 2, 0, 1)
    texture = 1.0 + 0.08 * np.sin(xx / 3.0) * np.cos(yy / 4.0)
    img = mask[..., None] * np.array(colour, np.float32) * (falloff * texture)[..., None]
    if noise:
        img += np.abs(rng.normal(0.0, noise, img.shape))
    return np.clip(img, 0, 255).astype(np.uint8)


def expected_box(h: int, w: int, centre: tuple[int, int], radius: int) -> np.ndarray:
    cx, cy = centre
    return np.array([max(0, cy - radius), min(h, cy + radius + 1), max(0, cx - radius), min(w, cx + radius + 1)])


def jpeg_roundtrip(rgb: np.ndarray, quality: int = 60) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def test_crop_noisy_jpeg_frame():
    img = disc_image(centre=(70, 62), radius=48, noise=6.0)
    img[5, 5] = img[110, 150] = 255  # hot pixels in the frame
    img = jpeg_roundtrip(img)
    box = np.array(fundus_bbox(img))
    assert np.abs(box - expected_box(120, 160, (70, 62), 48)).max() <= TOL
    assert crop_to_fundus(img).shape[:2] == (box[1] - box[0], box[3] - box[2])


def test_crop_vignetted_dark_rim():
    img = disc_image(radius=52, colour=(150, 90, 40), vignette=0.75)
    box = np.array(fundus_bbox(img))
    assert np.abs(box - expected_box(120, 160, (80, 60), 52)).max() <= TOL


def test_crop_low_contrast_dark_photo():
    img = disc_image(radius=45, colour=(28, 18, 8), noise=1.0, seed=1)
    box = np.array(fundus_bbox(img))
    assert np.abs(box - expected_box(120, 160, (80, 60), 45)).max() <= TOL


def test_crop_cut_disc_keeps_full_width_and_cut_rows():
    # IDRiD-like: the disc is wider than the image is tall, cut at top and bottom.
    img = disc_image(h=96, w=160, centre=(80, 48), radius=62, noise=3.0)
    top, bottom, left, right = fundus_bbox(img)
    assert (top, bottom) == (0, 96)
    assert abs(left - 18) <= TOL and abs(right - 143) <= TOL


def test_crop_ignores_text_in_a_corner():
    img = disc_image(radius=45)
    cv2.putText(img, "OD 12", (2, 116), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    box = np.array(fundus_bbox(img))
    assert np.abs(box - expected_box(120, 160, (80, 60), 45)).max() <= TOL


def test_crop_ignores_a_thin_streak_attached_to_the_disc():
    img = disc_image(radius=45)
    cv2.line(img, (80, 60), (158, 2), (255, 255, 255), 1)  # 1 px light leak reaching the corner
    box = np.array(fundus_bbox(img))
    assert np.abs(box - expected_box(120, 160, (80, 60), 45)).max() <= TOL


def test_crop_large_image_box_scaled_back():
    img = disc_image(h=600, w=900, centre=(430, 300), radius=280)
    box = np.array(fundus_bbox(img))  # the mask is computed 4x smaller
    assert np.abs(box - expected_box(600, 900, (430, 300), 280)).max() <= 4


def test_crop_all_black_falls_back_to_whole_image(caplog):
    img = np.zeros((64, 80, 3), np.uint8)
    with caplog.at_level(logging.WARNING):
        out = crop_to_fundus(img)
    assert out.shape == img.shape
    assert "no fundus" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert preprocess_image(img, PreprocessConfig(cache_size=32), "odir/images/7_left.jpg").shape == (32, 32, 3)
    assert caplog.text.count("odir/images/7_left.jpg: no fundus found") == 1  # the photo is named


@pytest.mark.parametrize("shape", [(1, 1, 3), (3, 700, 3), (700, 2, 3)])
def test_tiny_or_elongated_images_do_not_crash(shape):
    img = np.full(shape, 120, np.uint8)
    assert crop_to_fundus(img).size > 0
    out = preprocess_image(img, PreprocessConfig(cache_size=32))
    assert out.shape == (32, 32, 3) and out is not img


def test_crop_rejects_non_rgb():
    with pytest.raises(ValueError, match="H, W, 3"):
        crop_to_fundus(np.zeros((10, 10), np.uint8))


def test_pad_to_square_centres_the_image():
    img = np.full((20, 40, 3), 9, np.uint8)
    out = pad_to_square(img)
    assert out.shape == (40, 40, 3)
    assert (out[:10] == 0).all() and (out[30:] == 0).all() and (out[10:30] == 9).all()


@pytest.mark.parametrize("h, w, size", [(342, 432, 256), (700, 900, 256), (3000, 2000, 128), (100, 80, 160)])
def test_resize_to_fit_size_and_anti_aliasing(h, w, size):
    checker = ((np.indices((h, w)).sum(axis=0) % 2) * 255).astype(np.uint8)
    img = np.repeat(checker[..., None], 3, axis=2)  # finest possible pattern: aliases if point-sampled
    out = resize_to_fit(img, size)
    assert max(out.shape[:2]) == size and abs(out.shape[1] / out.shape[0] - w / h) < 0.02
    if size < max(h, w):
        assert abs(float(out.mean()) - 127.5) < 3 and out.std() < 20  # averaged to grey
    assert resize_to_fit(img, size, keep_aspect=False).shape == (size, size, 3)


def test_clahe_deterministic_and_changes_lightness_only():
    img = disc_image(radius=55, colour=(140, 90, 50), vignette=0.4)
    a, b = apply_clahe(img, 2.0, 8), apply_clahe(img, 2.0, 8)
    assert np.array_equal(a, b)
    lab_in, lab_out = (cv2.cvtColor(x, cv2.COLOR_RGB2LAB).astype(int) for x in (img, a))
    inside = lab_in[..., 0] > 40
    assert np.abs(lab_out[..., 0] - lab_in[..., 0])[inside].mean() > 3  # lightness changed
    assert np.abs(lab_out[..., 1:] - lab_in[..., 1:])[inside].max() <= 4  # colour kept
    hue_in, hue_out = (cv2.cvtColor(x, cv2.COLOR_RGB2HSV)[..., 0].astype(int) for x in (img, a))
    assert np.median(np.abs(hue_out - hue_in)[inside]) <= 1


def test_ben_graham_centres_on_128():
    img = disc_image(h=128, w=128, radius=70, vignette=0.5)  # fills the image: no frame
    out = ben_graham(img, sigma_px=4.0)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert abs(float(out[24:104, 24:104].mean()) - 128) < 8
    with pytest.raises(ValueError, match="sigma_px"):
        ben_graham(img, 0.0)


def test_circular_mask_zeros_corners_keeps_centre():
    img = np.full((64, 64, 3), 200, np.uint8)
    out = circular_mask(img)
    assert (out[0, 0] == 0).all() and (out[-1, -1] == 0).all() and (out[0, 63] == 0).all()
    assert (out[32, 32] == 200).all() and (out[32, 1] == 200).all()
    assert (circular_mask(img, 0.2)[32, 2] == 0).all()
    with pytest.raises(ValueError, match="margin"):
        circular_mask(img, 1.5)


@pytest.mark.parametrize("overrides", [
    {}, {"medical": False}, {"keep_aspect": False}, {"ben_graham": True, "circular_mask": True},
    {"circular_mask": True}, {"cache_size": 200},
])
def test_preprocess_image_shape_and_determinism(overrides):
    cfg = PreprocessConfig(**{"cache_size": 64, **overrides})
    img = disc_image(h=96, w=160, centre=(80, 48), radius=62, noise=2.0)
    out = preprocess_image(img, cfg)
    assert out.shape == (cfg.cache_size, cfg.cache_size, 3) and out.dtype == np.uint8
    assert out.flags.c_contiguous
    assert np.array_equal(out, preprocess_image(img, cfg))


def test_preprocess_image_pads_a_cut_disc_with_black():
    cfg = PreprocessConfig(cache_size=64)
    out = preprocess_image(disc_image(h=96, w=160, centre=(80, 48), radius=62), cfg)
    assert (out[:5] == 0).all() and (out[-5:] == 0).all()  # padding stays exactly black
    assert out[32, 2:62].min(axis=1).max() > 0  # the fundus spans the full width


def test_preprocess_image_rejects_float_input():
    with pytest.raises(ValueError, match="uint8"):
        preprocess_image(np.zeros((8, 8, 3), np.float32), PreprocessConfig(cache_size=16))


@pytest.mark.parametrize("h, w, target, factor", [
    (683, 1024, 256, 2), (683, 1024, 512, 1), (2848, 3410, 256, 8), (2848, 3410, 512, 4),
    (2592, 3888, 256, 4), (100, 100, 256, 1), (683, 1024, None, 1),
])
def test_reduction_factor(h, w, target, factor):
    assert reduction_factor(h, w, target) == factor


def test_read_fundus_reduced_decoding_and_rgb_order(tmp_path):
    img = disc_image(h=600, w=800, radius=280, colour=(220, 40, 10))
    jpg, png = tmp_path / "a.jpeg", tmp_path / "a.png"
    cv2.imwrite(str(jpg), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(png), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert read_fundus(jpg).shape == (600, 800, 3)
    assert read_fundus(jpg, 128).shape == (300, 400, 3)  # 0.75 * 600 / 2 >= 128 > 0.75 * 600 / 4
    assert read_fundus(jpg, 50).shape == (75, 100, 3)
    assert read_fundus(png, 50).shape == (600, 800, 3)  # reduced decoding only for JPEG
    centre = read_fundus(jpg, 50)[37, 50]
    assert centre[0] > 150 and centre[2] < 60  # red stays in channel 0


def test_read_fundus_errors_name_the_file(tmp_path):
    with pytest.raises(OSError, match="missing.jpg"):
        read_fundus(tmp_path / "missing.jpg")
    bad = tmp_path / "corrupt.jpeg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(ValueError, match="corrupt.jpeg"):
        read_fundus(bad, 128)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.png"):
        read_fundus(empty)


REAL = [("eyepacs-dev/images", name) for name in ("10_left.jpeg", "1002_right.jpeg", "1051_right.jpeg", "735_left.jpeg")]
REAL += [("idrid-fullres", name) for name in ("IDRiD_01.jpg", "IDRiD_17.jpg")]


@pytest.mark.parametrize("folder, name", REAL)
def test_real_photos_crop_keeps_fundus_and_removes_frame(folder, name):
    path = DATA / folder / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    size = 128
    rgb = read_fundus(path, size)
    top, bottom, left, right = fundus_bbox(rgb)
    bright = cv2.max(rgb[..., 0], rgb[..., 1]) > 25
    inside = bright[top:bottom, left:right].sum()
    assert inside >= 0.97 * bright.sum()  # keeps the fundus
    if folder == "idrid-fullres":  # the disc is cut on all four sides: nothing to drop
        assert (top, bottom, left, right) == (0, rgb.shape[0], 0, rgb.shape[1])
    else:  # EyePACS: wide black frame left and right
        assert (right - left) < 0.9 * rgb.shape[1]
    out = preprocess_image(rgb, PreprocessConfig(cache_size=size))
    grey = out.max(axis=2)
    corners = [grey[:8, :8], grey[:8, -8:], grey[-8:, :8], grey[-8:, -8:]]
    assert max(float(c.mean()) for c in corners) < 20  # corners dark
    assert grey[48:80, 48:80].mean() > 40  # centre bright
    row = grey[size // 2]
    assert row[:4].max() > 10 and row[-4:].max() > 10  # the fundus touches both sides: tight crop
