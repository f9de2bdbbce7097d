"""Synthetic fundus photographs and the demo dataset writer."""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from dr_core.synthetic.demo import APTOS_GRADE_COUNTS, assign_grades, make_demo_dataset, render_fundus
from dr_core.synthetic.lesions import plan_lesions

REPO = Path(__file__).resolve().parents[1]


def _render(grade: int, seed: int, size: int = 112, eye: str = "left") -> np.ndarray:
    return render_fundus(grade, np.random.default_rng(seed), size, eye)


def _dark_red_pixels(rgb: np.ndarray) -> int:
    """Pixels much darker than their surroundings in the green channel, inside the retina."""
    green = rgb[..., 1]
    retina = cv2.erode((rgb.max(axis=2) > 30).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
    blackhat = cv2.morphologyEx(green, cv2.MORPH_BLACKHAT, kernel)
    return int(((blackhat > 25) & retina).sum())


@pytest.mark.parametrize("size", [96, 113, 128])
def test_render_shape_and_dtype(size):
    img = _render(2, 0, size)
    assert img.shape == (size, size, 3)
    assert img.dtype == np.uint8
    assert img.flags["C_CONTIGUOUS"]


def test_render_is_deterministic_per_seed():
    assert np.array_equal(_render(3, 7), _render(3, 7))
    assert not np.array_equal(_render(3, 7), _render(3, 8))


def test_dark_frame_and_bright_retina():
    for seed in range(4):
        img = _render(0, seed, 128).astype(int)
        corners = [img[:6, :6], img[:6, -6:], img[-6:, :6], img[-6:, -6:]]
        assert max(c.max() for c in corners) <= 12, f"seed {seed}: corners are not black"
        centre = img[48:80, 48:80]
        assert centre.mean() > 50, f"seed {seed}: retina too dark ({centre.mean():.1f})"
        assert centre[..., 0].mean() > centre[..., 2].mean() + 20, f"seed {seed}: retina is not red-orange"


def test_right_eye_mirrors_left_eye():
    left, right = _render(1, 5, eye="left"), _render(1, 5, eye="right")
    assert np.array_equal(right, left[:, ::-1])
    # the optic disc (brightest spot) lies on the left of a left-eye photograph
    blur = cv2.GaussianBlur(left.sum(axis=2).astype(np.float32), (0, 0), 4)
    assert np.unravel_index(blur.argmax(), blur.shape)[1] < left.shape[1] / 2


def test_lesion_amount_grows_with_grade():
    red = {g: np.mean([_dark_red_pixels(_render(g, s, 128)) for s in range(3)]) for g in (0, 2, 4)}
    assert red[4] > red[0] * 1.5 + 20, red
    assert red[2] > red[0], red
    plans = {g: [plan_lesions(g, np.random.default_rng(s)) for s in range(20)] for g in range(5)}
    mean_red = [np.mean([p.red_lesions for p in plans[g]]) for g in range(5)]
    assert mean_red[0] == 0 and mean_red[0] < mean_red[1] < mean_red[2] < mean_red[3], mean_red
    assert all(p.nv_tufts > 0 for p in plans[4]) and not any(p.nv_tufts for g in range(4) for p in plans[g])


@pytest.mark.parametrize("kwargs, message", [
    ({"grade": 5}, "grade must be an integer 0..4"),
    ({"grade": True}, "grade must be an integer 0..4"),
    ({"size": 16}, "size must be an integer >= 32"),
    ({"eye": "lft"}, "did you mean 'left'"),
])
def test_render_rejects_bad_arguments(kwargs, message):
    args = {"grade": 1, "rng": np.random.default_rng(0), "size": 64, "eye": "left"} | kwargs
    with pytest.raises(ValueError, match=message):
        render_fundus(**args)


def test_assign_grades_keeps_aptos_proportions_and_pairs_eyes():
    grades = assign_grades(200, np.random.default_rng(0))
    assert grades.shape == (200, 2)
    share = np.bincount(grades.ravel(), minlength=5) / grades.size
    aptos = np.asarray(APTOS_GRADE_COUNTS) / sum(APTOS_GRADE_COUNTS)
    assert np.abs(share - aptos).max() < 0.01, share
    same = (grades[:, 0] == grades[:, 1]).mean()
    assert 0.7 <= same <= 0.9, same
    assert np.abs(grades[:, 0] - grades[:, 1]).max() <= 1
    assert (grades[:, 0] > grades[:, 1]).any() and (grades[:, 0] < grades[:, 1]).any()
    assert np.array_equal(grades, assign_grades(200, np.random.default_rng(0)))


def test_assign_grades_handles_tiny_and_rejects_bad_counts():
    assert assign_grades(1, np.random.default_rng(0)).shape == (1, 2)
    with pytest.raises(ValueError, match="n_patients"):
        assign_grades(0, np.random.default_rng(0))


def test_make_demo_dataset_writes_aptos_layout(tmp_path):
    table = make_demo_dataset(tmp_path / "demo", n_patients=3, image_size=64, seed=1, workers=1)
    csv = pd.read_csv(tmp_path / "demo" / "train.csv")
    assert list(csv.columns) == ["id_code", "diagnosis", "patient_id"]
    pd.testing.assert_frame_equal(csv, table)
    assert csv["id_code"].iloc[0] == "demo_p0001_left" and csv["patient_id"].iloc[0] == "demo_p0001"
    assert (csv.groupby("patient_id")["id_code"].count() == 2).all()
    assert csv["diagnosis"].between(0, 4).all()
    files = sorted(p.name for p in (tmp_path / "demo" / "train_images").iterdir())
    assert files == sorted(f"{i}.png" for i in csv["id_code"])  # no temporary files left behind
    img = cv2.imread(str(tmp_path / "demo" / "train_images" / files[0]))
    assert img.shape == (64, 64, 3)


def test_make_demo_dataset_is_byte_identical_on_rerun(tmp_path):
    for name in ("a", "b"):
        make_demo_dataset(tmp_path / name, n_patients=2, image_size=48, seed=3, workers=1)
    for f in sorted((tmp_path / "a").rglob("*.*")):
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes(), f.name


@pytest.mark.slow
def test_make_demo_dataset_does_not_depend_on_worker_count(tmp_path):
    make_demo_dataset(tmp_path / "one", n_patients=2, image_size=48, seed=3, workers=1)
    make_demo_dataset(tmp_path / "two", n_patients=2, image_size=48, seed=3, workers=2)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.*"))
    assert len(files) == 5
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f


@pytest.mark.parametrize("kwargs, message", [
    ({"n_patients": 0}, "n_patients must be an integer >= 1"),
    ({"image_size": 8}, "image_size must be an integer >= 32"),
    ({"seed": -1}, "seed must be a non-negative integer"),
    ({"workers": -2}, "workers must be 0"),
])
def test_make_demo_dataset_rejects_bad_arguments(tmp_path, kwargs, message):
    args = {"out_dir": tmp_path, "n_patients": 2, "image_size": 48, "seed": 0, "workers": 1} | kwargs
    with pytest.raises(ValueError, match=message):
        make_demo_dataset(**args)


@pytest.mark.slow
def test_demo_stage_reads_params(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text("seed: 5\ndemo:\n  n_patients: 5\n  image_size: 40\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO / "stages"))
    sys.modules.pop("demo", None)
    import demo

    assert demo.main(["--out", "data/demo", "--workers", "1"]) == 0
    csv = pd.read_csv(tmp_path / "data" / "demo" / "train.csv")
    assert len(csv) == 10
    first = tmp_path / "data" / "demo" / "train_images" / f"{csv.id_code[0]}.png"
    assert cv2.imread(str(first)).shape == (40, 40, 3)
