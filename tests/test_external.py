"""The external stage: a held-out folder scored at the val-chosen operating point, and refused when it shares
photographs with the split."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
import yaml

from conftest import REPO
from dr_core.config import GRADE_NAMES, EvaluateConfig, PreprocessConfig, SourceConfig
from dr_core.data.ingest import DataError
from dr_core.data.sources import refuse_shared_photos, training_photos
from dr_core.evaluation.report import choose_threshold
from dr_core.models.checkpoint import CheckpointMeta, save_checkpoint
from test_ingest import write_dataset
from test_report import fake_split
from test_split import FOUR_PER_GRADE, split_folders


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A split of one source, a checkpoint, an operating point chosen on (fake) val, and an external folder."""
    root = tmp_path_factory.mktemp("external")
    train = write_dataset(root / "train", FOUR_PER_GRADE, "eyepacs", seed=1)
    split_folders({"a": train}, root / "split")
    write_dataset(root / "ext", [(g, g) for g in range(5)] * 2, "eyepacs", seed=2)
    torch.manual_seed(0)
    meta = CheckpointMeta(model_name="resnet10t", num_classes=5, image_size=64, mean=(0.5,) * 3, std=(0.25,) * 3,
                          preprocess=PreprocessConfig(cache_size=64), class_names=GRADE_NAMES, referable_grade=2,
                          epoch=1, stage=2)
    save_checkpoint(root / "best_model.pth", timm.create_model("resnet10t", num_classes=5), meta)
    y, probs = fake_split(60, np.random.default_rng(0))
    point = choose_threshold(y, probs, EvaluateConfig())
    (root / "operating_point.json").write_text(json.dumps({**point, "grade_cutpoints": None}))
    return root


def _stage():
    spec = importlib.util.spec_from_file_location("external_stage", REPO / "stages" / "external.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _main(root: Path, ext: dict, out: Path) -> int:
    params = {"data": {"sources": {"a": {"labels_csv": str(root / "train" / "labels.csv"),
                                         "img_dir": str(root / "train" / "images")}}},
              "evaluate": {"bootstrap": 20, "external": {"ext": ext}},
              "model": {"name": "resnet10t", "pretrained": False, "pretrained_file": ""}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return _stage().main(["--name", "ext", "--model-path", str(root / "best_model.pth"), "--operating-point",
                          str(root / "operating_point.json"), "--split-dir", str(root / "split"), "--out", str(out),
                          "--params", str(root / "params.yaml")])


def test_an_external_folder_is_scored_at_the_val_operating_point(project: Path, tmp_path: Path) -> None:
    ext = {"labels_csv": str(project / "ext" / "labels.csv"), "img_dir": str(project / "ext" / "images")}
    assert _main(project, ext, tmp_path / "out") == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())["external"]
    point = json.loads((project / "operating_point.json").read_text())
    assert metrics["n_images"] == 20 and metrics["n_patients"] == 10
    assert metrics["referable_threshold"] == point["threshold"]  # nothing tuned on the external photos
    assert metrics["val_referable_sensitivity"] == point["val_sensitivity"]
    for name in ("predictions.csv", "bad_images.csv", "classification_report.txt", "roc_curves.png",
                 "plots/roc_referable.csv"):
        assert (tmp_path / "out" / name).is_file(), name


def test_an_external_folder_sharing_a_training_photo_is_refused(project: Path, tmp_path: Path, capsys) -> None:
    ext_dir = tmp_path / "ext"
    shutil.copytree(project / "ext", ext_dir)
    shutil.copy(project / "train" / "images" / "13_left.jpeg", ext_dir / "images" / "77_left.jpeg")
    labels = pd.read_csv(ext_dir / "labels.csv")
    pd.concat([labels, pd.DataFrame({"image": ["77_left"], "level": [0]})]).to_csv(ext_dir / "labels.csv", index=False)
    ext = {"labels_csv": str(ext_dir / "labels.csv"), "img_dir": str(ext_dir / "images")}
    assert _main(project, ext, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "error: external set 'ext': " in err and "line 22: '77_left' has the content of a/13_left" in err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_the_same_file_as_a_training_photo_is_refused_whatever_its_label(project: Path, tmp_path: Path) -> None:
    training = training_photos(project / "split", {"a": SourceConfig(str(project / "train" / "labels.csv"),
                                                                     str(project / "train" / "images"))})
    assert len(training) == 40 and set(training.columns) == {"id", "digest", "path"}
    rows = pd.DataFrame({"id": ["x"], "line": [2], "file": ["11_right.jpeg"], "digest": ["other bytes"]})
    with pytest.raises(DataError, match=r"1 of 1 photographs are also in the training data.*line 2: 'x' is the "
                                        r"file of a/11_right"):
        refuse_shared_photos(rows, project / "train" / "images", training, Path("ext.csv"))
    refuse_shared_photos(rows, project / "ext" / "images", training, Path("ext.csv"))  # another folder: fine
