"""Grad-CAM and the predict CLI on a tiny timm model and generated photos."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import timm
import torch
from torch import nn

from conftest import fake_fundus
from dr_core.models.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from dr_core.config import GRADE_NAMES, PreprocessConfig
from dr_core.evaluation.gradcam import GradCamError, feature_module, grad_cam, overlay_heatmap, side_by_side
from dr_core.evaluation.inference import predict_probs
from dr_core.cli.predict import main
from dr_core.evaluation.predict import threshold_from_metrics
from dr_core.data.preprocess import preprocess_image, read_fundus


class RedSpotNet(nn.Module):
    """Feature map = red channel (1x1 conv), class 1 logit = its mean: evidence is where red is."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        self.act = nn.ReLU()
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))
            self.fc.weight.copy_(torch.tensor([[-1.0], [1.0]]))
            self.fc.bias.zero_()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x).mean(dim=(2, 3)))


def test_grad_cam_points_at_the_evidence() -> None:
    x = torch.zeros(1, 3, 32, 32)
    x[0, 0, 4:10, 20:28] = 1.0  # red patch, top right
    maps, probs = grad_cam(RedSpotNet().eval(), x, target=1)
    assert maps.shape == (1, 32, 32) and maps.max() == pytest.approx(1.0)
    y, xpos = np.unravel_index(maps[0].argmax(), maps[0].shape)
    assert 4 <= y < 10 and 20 <= xpos < 28
    assert maps[0, 20:, :10].max() < 0.05  # nothing far from the patch
    assert probs.shape == (1, 2) and probs[0].sum() == pytest.approx(1.0)
    # explaining the other class: negative evidence only, so the map is empty
    maps0, _ = grad_cam(RedSpotNet().eval(), x, target=0)
    assert maps0.max() == pytest.approx(0.0)


@pytest.mark.parametrize("name, expected", [("resnet10t", "layer4"), ("tf_efficientnet_lite0", "bn2")])
def test_feature_module_of_timm_models(name: str, expected: str) -> None:
    model = timm.create_model(name, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    module = feature_module(model, x)
    assert module is model.get_submodule(expected)
    maps, probs = grad_cam(model, x)
    assert maps.shape == (2, 64, 64) and 0.0 <= maps.min() and maps.max() <= 1.0
    assert probs.shape == (2, 5)


def test_feature_module_refuses_token_models() -> None:
    class Tokens(nn.Module):
        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(2)

    with pytest.raises(GradCamError, match="convolutional feature map"):
        feature_module(Tokens(), torch.zeros(1, 3, 8, 8))


def test_overlay_and_panel_shapes() -> None:
    rgb = np.full((40, 40, 3), 100, np.uint8)
    cam = np.zeros((10, 10), np.float32)
    cam[0, 0] = 1.0
    over = overlay_heatmap(rgb, cam)
    assert over.shape == rgb.shape and over.dtype == np.uint8
    assert not np.array_equal(over[0, 0], over[39, 39])  # hot corner differs from the cold one
    panel = side_by_side(rgb, cam, "Moderate (p=0.50)")
    assert panel.shape[1] == 80 and panel.shape[0] > 40


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A checkpoint of an untrained resnet10t and a folder of three photos plus a broken one."""
    root = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=5)
    meta = CheckpointMeta(model_name="resnet10t", num_classes=5, image_size=64, mean=(0.5,) * 3, std=(0.25,) * 3,
                          preprocess=PreprocessConfig(cache_size=64), class_names=GRADE_NAMES, referable_grade=2,
                          epoch=1, stage=2)
    save_checkpoint(root / "best_model.pth", model, meta)
    folder = root / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, grade in enumerate((0, 2, 4)):
        # wider than tall with a black border, like a camera frame
        frame = np.zeros((90, 120, 3), np.uint8)
        frame[5:85, 20:100] = cv2.resize(fake_fundus(grade, rng, 64), (80, 80))
        cv2.imwrite(str(folder / f"eye{i}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("ignored: not a photo")
    return root / "best_model.pth", folder


def test_predict_folder_skips_broken_photo_and_writes_gradcam(photos, tmp_path: Path) -> None:
    model_path, folder = photos
    out, cams = tmp_path / "preds.csv", tmp_path / "cams"
    rc = main(["--model-path", str(model_path), "--input", str(folder), "--output", str(out),
               "--gradcam-dir", str(cams), "--on-error", "skip"])
    assert rc == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["file", "grade", "grade_name", "prob_0", "prob_1", "prob_2", "prob_3",
                                   "prob_4", "referable_score", "referable", "referral_threshold", "quality"]
    assert table["quality"].isna().all()  # empty: every photo fit to grade
    assert table["file"].tolist() == ["eye0.png", "eye1.png", "eye2.png"]
    probs = table[[f"prob_{k}" for k in range(5)]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(table["referable_score"], probs[:, 2:].sum(1), atol=1e-5)
    assert (table["referable"] == (table["referable_score"] >= 0.5)).all()
    assert [GRADE_NAMES[g] for g in table["grade"]] == table["grade_name"].tolist()
    assert sorted(p.name for p in cams.iterdir()) == [f"eye{i}_gradcam.png" for i in range(3)]
    assert cv2.imread(str(cams / "eye0_gradcam.png")) is not None


def test_predict_applies_the_checkpoint_preprocessing(photos, tmp_path: Path) -> None:
    model_path, folder = photos
    out = tmp_path / "one.csv"
    assert main(["--model-path", str(model_path), "--input", str(folder / "eye1.png"), "--output", str(out)]) == 0
    row = pd.read_csv(out).iloc[0]
    model, meta = load_checkpoint(model_path)
    cached = preprocess_image(read_fundus(folder / "eye1.png"), meta.preprocess)
    expected = predict_probs(model, cached[None], meta)[0]
    np.testing.assert_allclose([row[f"prob_{k}"] for k in range(5)], expected, atol=1e-5)


def test_predict_broken_photo_is_an_error_naming_it(photos, tmp_path: Path, caplog) -> None:
    model_path, folder = photos
    with caplog.at_level(logging.ERROR):
        rc = main(["--model-path", str(model_path), "--input", str(folder), "--output", str(tmp_path / "p.csv")])
    assert rc == 1
    assert "broken.jpg" in caplog.text and "--on-error skip" in caplog.text
    assert not (tmp_path / "p.csv").exists()


def test_predict_checks_every_photo_before_grading_any(photos, tmp_path: Path, caplog, monkeypatch) -> None:
    """A bad file late in a folder stops the run before any grading, naming every bad file."""
    import dr_core.evaluation.predict as predict

    model_path, folder = photos
    batch = tmp_path / "batch"
    batch.mkdir()
    for i in range(3):
        (batch / f"a{i}.png").write_bytes((folder / f"eye{i}.png").read_bytes())
    (batch / "z_broken.jpg").write_bytes(b"not a jpeg")
    (batch / "z_cut.png").write_bytes((folder / "eye0.png").read_bytes()[:200])  # copy cut short
    calls = []
    real = predict.predict_probs
    monkeypatch.setattr(predict, "predict_probs", lambda *a, **k: calls.append(1) or real(*a, **k))
    with caplog.at_level(logging.ERROR):
        rc = main(["--model-path", str(model_path), "--input", str(batch), "--output", str(tmp_path / "p.csv"),
                   "--batch-size", "1"])
    assert rc == 1 and calls == []  # nothing graded
    assert "2 of 5 photo(s) cannot be read" in caplog.text and "z_broken.jpg" in caplog.text
    assert "z_cut.png (truncated PNG" in caplog.text and "nothing was graded" in caplog.text
    assert not (tmp_path / "p.csv").exists()


def test_predict_threshold_from_metrics(photos, tmp_path: Path) -> None:
    model_path, folder = photos
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"test": {"qwk": 0.5, "referable_threshold": 0.0}}))
    assert threshold_from_metrics(metrics) == 0.0
    out = tmp_path / "p.csv"
    assert main(["--model-path", str(model_path), "--input", str(folder / "eye0.png"), "--output", str(out),
                 "--threshold-from", str(metrics)]) == 0
    assert pd.read_csv(out)["referable"].all()  # every score is >= 0
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"test": {"qwk": 0.5}}))
    point = tmp_path / "operating_point.json"
    point.write_text(json.dumps({"threshold": 0.25, "mode": "sensitivity"}))
    assert threshold_from_metrics(point) == 0.25
    with pytest.raises(ValueError, match="no threshold or referable_threshold"):
        threshold_from_metrics(other)


def test_predict_missing_input_and_checkpoint(photos, tmp_path: Path, caplog) -> None:
    model_path, _ = photos
    assert main(["--model-path", str(model_path), "--input", str(tmp_path / "nope"),
                 "--output", str(tmp_path / "p.csv")]) == 1
    assert "no such photo or folder" in caplog.text
    assert main(["--model-path", str(tmp_path / "missing.pth"), "--input", str(tmp_path),
                 "--output", str(tmp_path / "p.csv")]) == 1
    assert "checkpoint not found" in caplog.text


def _eyes(folder: Path, tmp_path: Path, names: dict[str, str]) -> Path:
    """A folder of the fixture's photos under EyePACS names (source name -> new name)."""
    eyes = tmp_path / "eyes"
    eyes.mkdir()
    for src, name in names.items():
        (eyes / name).write_bytes((folder / src).read_bytes())
    return eyes


def test_predict_blends_fellow_eyes_as_the_operating_point_did(photos, tmp_path: Path, caplog) -> None:
    model_path, folder = photos
    eyes = _eyes(folder, tmp_path, {"eye0.png": "10_left.png", "eye2.png": "10_right.png", "eye1.png": "11_left.png"})
    plain, blended = tmp_path / "plain.csv", tmp_path / "blended.csv"
    point = tmp_path / "operating_point.json"
    point.write_text(json.dumps({"threshold": 0.3, "fellow_eye_weight": 0.0}))
    assert main(["--model-path", str(model_path), "--input", str(eyes), "--output", str(plain),
                 "--threshold-from", str(point)]) == 0
    point.write_text(json.dumps({"threshold": 0.3, "fellow_eye_weight": 0.4, "fellow_eye_scope": "referable"}))
    with caplog.at_level(logging.INFO):
        assert main(["--model-path", str(model_path), "--input", str(eyes), "--output", str(blended),
                     "--threshold-from", str(point)]) == 0
    assert "2 of 3 photo(s) have a fellow eye" in caplog.text and "1 photo(s) have no fellow eye" in caplog.text
    own, mix = pd.read_csv(plain).set_index("file"), pd.read_csv(blended).set_index("file")
    assert mix.loc["10_left.png", "patient"] == 10 and mix.loc["11_left.png", "patient"] == 11
    s = own["referable_score"]
    assert mix.loc["10_left.png", "referable_score"] == pytest.approx(0.6 * s["10_left.png"] + 0.4 * s["10_right.png"],
                                                                     abs=2e-6)
    assert mix.loc["11_left.png", "referable_score"] == pytest.approx(s["11_left.png"], abs=2e-6)
    assert (mix["referable"] == (mix["referable_score"] >= 0.3)).all()
    assert (mix["grade"] == own["grade"]).all() and np.allclose(mix["prob_0"], own["prob_0"])
    point.write_text(json.dumps({"threshold": 0.3, "fellow_eye_weight": 0.4, "fellow_eye_scope": "all"}))
    assert main(["--model-path", str(model_path), "--input", str(eyes), "--output", str(blended),
                 "--threshold-from", str(point)]) == 0
    both = pd.read_csv(blended).set_index("file")
    p = own[[f"prob_{k}" for k in range(5)]]
    assert np.allclose(both.loc["10_right.png", [f"prob_{k}" for k in range(5)]],
                       0.6 * p.loc["10_right.png"] + 0.4 * p.loc["10_left.png"], atol=2e-6)


def test_predict_refuses_a_bad_fellow_eye_setting_naming_the_file(photos, tmp_path: Path, caplog) -> None:
    model_path, folder = photos
    point = tmp_path / "operating_point.json"
    point.write_text(json.dumps({"threshold": 0.3, "fellow_eye_weight": 1.5, "fellow_eye_scope": "referable"}))
    assert main(["--model-path", str(model_path), "--input", str(folder / "eye0.png"),
                 "--output", str(tmp_path / "p.csv"), "--threshold-from", str(point)]) == 1
    assert "operating_point.json: fellow_eye_weight 1.5" in caplog.text and "[0, 1)" in caplog.text


def test_metrics_json_reads_the_operating_point_beside_it(photos, tmp_path: Path, caplog) -> None:
    model_path, folder = photos
    eyes = _eyes(folder, tmp_path, {"eye0.png": "10_left.png", "eye2.png": "10_right.png"})
    results = tmp_path / "results"
    results.mkdir()
    (results / "metrics.json").write_text(json.dumps({"test": {"referable_threshold": 0.3}}))
    alone, beside = tmp_path / "alone.csv", tmp_path / "beside.csv"
    with caplog.at_level(logging.WARNING):
        assert main(["--model-path", str(model_path), "--input", str(eyes), "--output", str(alone),
                     "--threshold-from", str(results / "metrics.json")]) == 0
    assert "holds the referable threshold only" in caplog.text
    assert "patient" not in pd.read_csv(alone).columns  # nothing to blend with
    (results / "operating_point.json").write_text(json.dumps(
        {"threshold": 0.3, "fellow_eye_weight": 0.5, "fellow_eye_scope": "referable"}))
    assert main(["--model-path", str(model_path), "--input", str(eyes), "--output", str(beside),
                 "--threshold-from", str(results / "metrics.json")]) == 0
    own, mix = pd.read_csv(alone).set_index("file"), pd.read_csv(beside).set_index("file")
    pair_mean = own["referable_score"].mean()
    np.testing.assert_allclose(mix["referable_score"], [pair_mean, pair_mean], atol=2e-6)
    np.testing.assert_allclose(mix["referable_score_own"], own["referable_score"], atol=2e-6)


def test_gradcam_captions_show_the_blended_score(photos, tmp_path: Path, monkeypatch) -> None:
    import dr_core.evaluation.predict as predict

    model_path, folder = photos
    eyes = _eyes(folder, tmp_path, {"eye0.png": "10_left.png", "eye2.png": "10_right.png"})
    point = tmp_path / "operating_point.json"
    point.write_text(json.dumps({"threshold": 0.3, "fellow_eye_weight": 0.5, "fellow_eye_scope": "referable"}))
    captions: list[str] = []
    monkeypatch.setattr(predict, "side_by_side", lambda image, cam, caption: captions.append(caption) or image)
    # an untrained model scores every photo about the same: give the left eye grade 0, the right grade 4
    fixed = iter([np.eye(5, dtype=np.float32)[[0]], np.eye(5, dtype=np.float32)[[4]]])
    monkeypatch.setattr(predict, "predict_probs", lambda *args, **kwargs: next(fixed))
    out, cams = tmp_path / "p.csv", tmp_path / "cams"
    assert main(["--model-path", str(model_path), "--input", str(eyes), "--output", str(out),
                 "--threshold-from", str(point), "--gradcam-dir", str(cams), "--batch-size", "1"]) == 0
    table = pd.read_csv(out)
    assert sorted(p.name for p in cams.iterdir()) == ["10_left_gradcam.png", "10_right_gradcam.png"]
    assert len(captions) == 2
    assert table["referable_score_own"].tolist() == [0.0, 1.0] and table["referable_score"].tolist() == [0.5, 0.5]
    for caption, (_, row) in zip(captions, table.iterrows()):
        assert f"referable score {row['referable_score']:.2f}" in caption
        assert f"(own {row['referable_score_own']:.2f}, with fellow eye)" in caption


def test_predict_flags_photos_that_show_no_fundus_and_does_not_grade_them(photos, tmp_path: Path) -> None:
    model_path, folder = photos
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i in (0, 1):
        (mixed / f"eye{i}.png").write_bytes((folder / f"eye{i}.png").read_bytes())
    rng = np.random.default_rng(1)
    cv2.imwrite(str(mixed / "noise.png"), rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    cv2.imwrite(str(mixed / "black.png"), np.zeros((90, 120, 3), np.uint8))
    gray = cv2.cvtColor(cv2.imread(str(folder / "eye2.png")), cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(mixed / "gray.png"), cv2.merge([gray, gray, gray]))
    out = tmp_path / "p.csv"
    assert main(["--model-path", str(model_path), "--input", str(mixed), "--output", str(out),
                 "--threshold", "0.0"]) == 0
    table = pd.read_csv(out).set_index("file")
    assert sorted(table.index) == ["black.png", "eye0.png", "eye1.png", "gray.png", "noise.png"]
    assert table.loc["noise.png", "quality"].startswith("no fundus: looks like noise")
    assert table.loc["black.png", "quality"].startswith("no fundus: image is black")
    assert table.loc["gray.png", "quality"].startswith("grayscale")
    flagged = table.loc[["noise.png", "black.png", "gray.png"]]
    graded_cols = ["grade", "grade_name", *(f"prob_{k}" for k in range(5)), "referable_score", "referable"]
    assert flagged[graded_cols].isna().all().all()  # not graded, so never "referable" (threshold 0 would say so)
    assert table.loc[["eye0.png", "eye1.png"], "quality"].isna().all()
    assert table.loc[["eye0.png", "eye1.png"], "referable"].all() and (table["grade"].dropna() % 1 == 0).all()


def test_predict_never_writes_over_an_input(photos, tmp_path: Path, caplog) -> None:
    model_path, folder = photos
    work = tmp_path / "work"
    work.mkdir()
    for name in ("eye0.png", "eye1.png", "eye2.png", "broken.jpg"):
        (work / name).write_bytes((folder / name).read_bytes())
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(model_path.read_bytes())
    point = tmp_path / "operating_point.json"
    point.write_text(json.dumps({"threshold": 0.3}))
    (tmp_path / "link.png").symlink_to(work / "eye1.png")
    before = {p: p.read_bytes() for p in (*work.iterdir(), checkpoint, point)}
    for output, what in ((work / "eye0.png", "input photo"), (work / ".." / "work" / "eye2.png", "input photo"),
                         (tmp_path / "link.png", "input photo"), (checkpoint, "checkpoint (--model-path)"),
                         (point, "operating point (--operating-point)")):
        caplog.clear()
        rc = main(["--model-path", str(checkpoint), "--input", str(work), "--output", str(output),
                   "--threshold-from", str(point), "--on-error", "skip"])
        assert rc == 1 and f"--output {output} is the {what}" in caplog.text, caplog.text
    caplog.clear()
    assert main(["--model-path", str(checkpoint), "--input", str(work / "eye1.png"), "--output",
                 str(work / "eye1.png")]) == 1
    assert "is the input photo" in caplog.text
    caplog.clear()
    assert main(["--model-path", str(checkpoint), "--input", str(work), "--output", str(tmp_path / "p.csv"),
                 "--gradcam-dir", str(work), "--on-error", "skip"]) == 1
    assert f"--gradcam-dir {work} is the photo folder (--input)" in caplog.text
    assert {p: p.read_bytes() for p in before} == before and sorted(p.name for p in work.iterdir()) == [
        "broken.jpg", "eye0.png", "eye1.png", "eye2.png"]


def test_an_operating_point_of_another_checkpoint_is_refused(photos, tmp_path: Path, caplog) -> None:
    model_path, folder = photos
    point = tmp_path / "operating_point.json"
    point.write_text(json.dumps({"threshold": 0.3, "model_sha256": "0" * 64}))
    rc = main(["--model-path", str(model_path), "--input", str(folder / "eye0.png"), "--output",
               str(tmp_path / "p.csv"), "--operating-point", str(point)])
    assert rc == 1 and "was chosen on val for another checkpoint" in caplog.text


def test_without_an_operating_point_the_fallback_is_announced(photos, tmp_path: Path, caplog) -> None:
    model_path, folder = photos
    out = tmp_path / "p.csv"
    assert main(["--model-path", str(model_path), "--input", str(folder / "eye0.png"), "--output", str(out)]) == 0
    assert "NO OPERATING POINT" in caplog.text and "referable score >= 0.5" in caplog.text
    assert pd.read_csv(out)["referral_threshold"].tolist() == [0.5]


def test_help_needs_no_heavy_imports() -> None:
    """--help answers before torch or timm is imported (a second or so instead of tens on a cold disk)."""
    import subprocess
    import sys

    code = ("import sys\nfrom dr_core.cli import evaluate, predict\n"
            "for cli in (evaluate, predict):\n"
            "    try:\n        cli.main(['--help'])\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'timm', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
