"""The export stage: ONNX grade probabilities match PyTorch, the handover metadata, and the model card."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import timm
import torch

from conftest import write_fake_cache
from dr_core.config import GRADE_NAMES, ExportConfig, PreprocessConfig
from dr_core.export.card import figures_table, model_card
from dr_core.export.handover import ExportError, HandoverPaths, hand_over
from dr_core.models.checkpoint import CheckpointMeta, save_checkpoint

POINT = {"threshold": 0.4321, "mode": "sensitivity", "target_sensitivity": 0.87, "val_sensitivity": 0.9,
         "val_specificity": 0.8, "grade_cutpoints": None}
TEST = {"n_images": 20, "n_patients": 20, "qwk": 0.5, "qwk_ci_low": 0.3, "qwk_ci_high": 0.7, "referable_auc": 0.8,
        "referable_auc_ci_low": 0.7, "referable_auc_ci_high": 0.9, "referable_sensitivity": 0.85,
        "referable_specificity": 0.75,
        "odir": {"n_images": 8, "n_patients": 8, "qwk": 0.4, "referable_auc": 0.77, "referable_auc_ci_low": 0.6,
                 "referable_auc_ci_high": 0.9, "referable_sensitivity": 0.8, "referable_specificity": 0.7}}
SPLIT = {"layout": "eyepacs", "n_images": 80, "n_patients": 40, "n_bad": 1,
         "splits": {"train": {"n_images": 40, "n_patients": 20, "grade_counts": {"0": 8, "1": 8, "2": 8, "3": 8, "4": 8}}}}


def _project(root: Path, head: str = "classification") -> HandoverPaths:
    torch.manual_seed(0)
    outputs = 1 if head == "regression" else 5
    meta = CheckpointMeta(model_name="resnet10t", num_classes=5, image_size=48, mean=(0.5,) * 3, std=(0.25,) * 3,
                          preprocess=PreprocessConfig(cache_size=64), class_names=GRADE_NAMES, head=head,
                          referable_grade=2, epoch=3, stage=2)
    model = timm.create_model("resnet10t", num_classes=outputs)
    save_checkpoint(root / "best_model.pth", model, meta)
    write_fake_cache(root / "cache", {"test": 20})
    for name, data in (("point.json", POINT), ("metrics.json", {"test": TEST}), ("split.json", SPLIT)):
        (root / name).write_text(json.dumps(data))
    return HandoverPaths(root / "best_model.pth", root / "point.json", root / "metrics.json", root / "split.json",
                         root / "cache", root / "export" / "model.onnx", root / "export" / "check.json",
                         root / "MODEL_CARD.md")


@pytest.mark.parametrize("head", ["classification", "regression"])
def test_onnx_grade_probabilities_match_pytorch(tmp_path: Path, head: str) -> None:
    paths = _project(tmp_path, head)
    check = hand_over(paths, ExportConfig())
    assert check["n_images"] == 20 and check["max_abs_diff"] <= 1e-4 and check["same_argmax"] == 1.0
    graph = onnx.load(str(paths.onnx))
    props = {p.key: p.value for p in graph.metadata_props}
    referral = json.loads(props["drgrade.referral"])
    assert referral["threshold"] == POINT["threshold"] and referral["referable_grade"] == 2
    assert json.loads(props["drgrade.input"])["size"] == 48
    assert len(props["drgrade.checkpoint_sha256"]) == 64
    assert json.loads(paths.check.read_text())["max_abs_diff"] == check["max_abs_diff"]


def test_an_export_that_drifts_from_pytorch_is_refused_and_removed(tmp_path: Path) -> None:
    paths = _project(tmp_path)
    with pytest.raises(ExportError, match="differ from PyTorch's by up to"):
        hand_over(paths, ExportConfig(atol=1e-12))
    assert not paths.onnx.exists()


def test_model_card_states_use_data_operating_point_and_figures_per_population(tmp_path: Path) -> None:
    paths = _project(tmp_path)
    hand_over(paths, ExportConfig())
    card = paths.card.read_text()
    for needle in ("Not a medical device", "## Training data", "## Operating point", "## Known limitations",
                   "refer when P(grade >= 2) >= **0.4321**", "keyword-derived grades", "resnet10t",
                   "| odir | 8 | 8 |", "0.800 (0.700-0.900)"):
        assert needle in card, needle


def test_figures_table_has_one_row_per_population() -> None:
    rows = figures_table(TEST).splitlines()
    assert len(rows) == 4 and rows[2].startswith("| all test photos | 20 | 20 | 0.500 (0.300-0.700)")
    assert model_card  # imported for the card test above


def test_model_card_names_each_source_and_the_stratification(tmp_path: Path) -> None:
    paths = _project(tmp_path)
    hand_over(paths, ExportConfig())
    one = paths.card.read_text()
    two = {**SPLIT, "sources": {"eyepacs": {"n_images": 40, "n_patients": 20, "n_bad": 1},
                                "odir": {"n_images": 40, "n_patients": 20, "n_bad": 0}}}
    paths.split_summary.write_text(json.dumps(two))
    paths.onnx.unlink()
    hand_over(paths, ExportConfig())
    card = paths.card.read_text()
    assert "stratified by grade." in one and "stratified by source and grade." in card
    assert "- `eyepacs`: 40 photographs of 20 patients; 1 left out as unusable." in card
