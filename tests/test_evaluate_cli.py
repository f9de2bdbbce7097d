"""The evaluate CLI on a labelled folder (EyePACS layout): outputs, and the operating point's settings."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import timm
import torch

from conftest import fake_fundus
from dr_core.models.checkpoint import CheckpointMeta, save_checkpoint
from dr_core.config import GRADE_NAMES, PreprocessConfig
from dr_core.cli.evaluate import main


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An untrained checkpoint and 12 EyePACS-named photos of 6 patients with their labels."""
    root = tmp_path_factory.mktemp("evaluate_cli")
    torch.manual_seed(0)
    meta = CheckpointMeta(model_name="resnet10t", num_classes=5, image_size=64, mean=(0.5,) * 3, std=(0.25,) * 3,
                          preprocess=PreprocessConfig(cache_size=64), class_names=GRADE_NAMES, referable_grade=2,
                          epoch=1, stage=2)
    model = timm.create_model("resnet10t", num_classes=5)
    torch.nn.init.normal_(model.get_classifier().weight, std=3.0)  # photos' scores far apart
    save_checkpoint(root / "best_model.pth", model, meta)
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for patient in range(6):
        for eye in ("left", "right"):
            grade = (patient + (eye == "right")) % 5
            frame = np.zeros((300, 400, 3), np.uint8)
            frame[10:290, 60:340] = cv2.resize(fake_fundus(grade, rng, 128), (280, 280))
            cv2.imwrite(str(images / f"{patient + 10}_{eye}.jpeg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            rows.append({"image": f"{patient + 10}_{eye}", "level": grade})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root, images


def _run(root: Path, images: Path, out: Path, point: dict) -> pd.DataFrame:
    (root / "operating_point.json").write_text(json.dumps(point))
    rc = main(["--labels-csv", str(root / "labels.csv"), "--img-dir", str(images),
               "--model-path", str(root / "best_model.pth"), "--output-dir", str(out),
               "--operating-point", str(root / "operating_point.json"), "--params", str(root / "none.yaml"),
               "--device", "cpu"])
    assert rc == 0
    return pd.read_csv(out / "predictions.csv").set_index("id")


def test_evaluate_cli_scores_a_folder_with_the_operating_point(folder, tmp_path: Path) -> None:
    root, images = folder
    own = _run(root, images, tmp_path / "own", {"threshold": 0.3})
    metrics = json.loads((tmp_path / "own" / "metrics.json").read_text())["external"]
    assert metrics["n_images"] == 12 and metrics["n_patients"] == 6
    assert metrics["referable_threshold"] == 0.3
    assert (own["referable_pred"] == (own["referable_score"] >= 0.3)).all()
    # blending recorded in the operating point is applied, whatever params.yaml says
    mixed = _run(root, images, tmp_path / "mixed",
                 {"threshold": 0.3, "fellow_eye_weight": 0.5, "fellow_eye_scope": "referable"})
    s = own["referable_score"]
    assert abs(s["10_left"] - s["10_right"]) > 1e-3  # so that blending shows
    assert mixed.loc["10_left", "referable_score"] == pytest.approx(0.5 * s["10_left"] + 0.5 * s["10_right"],
                                                                   abs=2e-6)
    assert (mixed["pred_grade"] == own["pred_grade"]).all()


def test_evaluate_cli_refuses_a_bad_fellow_eye_scope_naming_the_file(folder, tmp_path: Path, capsys) -> None:
    root, images = folder
    (root / "operating_point.json").write_text(json.dumps({"threshold": 0.3, "fellow_eye_weight": 0.2,
                                                           "fellow_eye_scope": "grades"}))
    rc = main(["--labels-csv", str(root / "labels.csv"), "--img-dir", str(images),
               "--model-path", str(root / "best_model.pth"), "--output-dir", str(tmp_path / "out"),
               "--operating-point", str(root / "operating_point.json"), "--params", str(root / "none.yaml")])
    assert rc == 1
    assert "operating_point.json: fellow_eye_weight 0.2 / fellow_eye_scope 'grades'" in capsys.readouterr().err


def _main(root: Path, images: Path, out: Path, *extra: str) -> int:
    return main(["--labels-csv", str(root / "labels.csv"), "--img-dir", str(images),
                 "--model-path", str(root / "best_model.pth"), "--output-dir", str(out), "--threshold", "0.3",
                 "--params", str(root / "none.yaml"), "--device", "cpu", *extra])


def test_evaluate_cli_keeps_a_users_files_unless_forced(folder, tmp_path: Path, capsys) -> None:
    root, images = folder
    out = tmp_path / "results"
    out.mkdir()
    (out / "metrics.json").write_text('{"mine": 1}')
    (out / "notes.txt").write_text("keep me")
    assert _main(root, images, out) == 1
    err = capsys.readouterr().err
    assert f"--output-dir {out} holds 2 file(s) that python -m dr_core.evaluate did not write there" in err
    assert "it would replace metrics.json; it also holds notes.txt" in err and "--force" in err
    assert (out / "metrics.json").read_text() == '{"mine": 1}' and sorted(p.name for p in out.iterdir()) == [
        "metrics.json", "notes.txt"]
    assert _main(root, images, out, "--force") == 0
    assert "external" in json.loads((out / "metrics.json").read_text())
    assert (out / "notes.txt").read_text() == "keep me"  # not the tool's: left alone, and still not its own
    assert _main(root, images, out) == 1
    assert "holds 1 file(s)" in capsys.readouterr().err
    (out / "notes.txt").unlink()
    assert _main(root, images, out) == 0  # only its own files (.drgrade-outputs.json lists them)


def test_evaluate_cli_never_writes_among_or_over_its_inputs(folder, tmp_path: Path, capsys) -> None:
    root, images = folder
    for out in (images, images / "results"):
        assert _main(root, images, out) == 1
        assert f"--output-dir {out} is" in capsys.readouterr().err and not (images / "results").exists()
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.csv").write_bytes((root / "labels.csv").read_bytes())
    rc = main(["--labels-csv", str(out / "predictions.csv"), "--img-dir", str(images),
               "--model-path", str(root / "best_model.pth"), "--output-dir", str(out), "--threshold", "0.3",
               "--params", str(root / "none.yaml"), "--force"])
    assert rc == 1
    assert "would write predictions.csv, which is the labels CSV (--labels-csv)" in capsys.readouterr().err
    assert (out / "predictions.csv").read_bytes() == (root / "labels.csv").read_bytes()
