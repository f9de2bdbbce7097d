"""Figures per source: at the pooled operating point, intervals within the source, nested for DVC."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from conftest import write_fake_cache
from dr_core.config import GRADE_NAMES, METRIC_KEYS, EvaluateConfig, PreprocessConfig
from dr_core.evaluation.by_source import by_source, headline, subset
from dr_core.evaluation.evaluate import evaluate_cached
from dr_core.evaluation.metrics import sensitivity_specificity
from dr_core.evaluation.predictions import Decision, Predictions
from dr_core.evaluation.report import choose_threshold, write_evaluation
from dr_core.models.checkpoint import CheckpointMeta, save_checkpoint
from test_report import fake_split


def _flat(tree: dict, prefix: str = "") -> dict:
    """Keys as `dvc metrics show` prints them: test.odir.qwk."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else key
        out.update(_flat(value, name) if isinstance(value, dict) else {name: value})
    return out


def _two_sources(n: int, seed: int) -> Predictions:
    rng = np.random.default_rng(seed)
    y, probs = fake_split(n, rng)
    sources = ["odir" if i < n // 3 else "eyepacs" for i in range(n)]
    return Predictions([f"{s}/{i}" for i, s in enumerate(sources)], [f"{s}/{i // 2}" for i, s in enumerate(sources)],
                       y, probs, sources=sources)


def test_per_source_blocks_sit_beside_the_overall_metrics(tmp_path: Path) -> None:
    val, test = _two_sources(90, 1), _two_sources(120, 2)
    cfg = EvaluateConfig(bootstrap=40)
    decision = Decision.from_operating_point(choose_threshold(val.y_true, val.probs, cfg))
    metrics = write_evaluation(tmp_path, test, decision, cfg, seed=3, blocks={"val": {"qwk": 0.5}})
    shown = _flat(json.loads((tmp_path / "metrics.json").read_text()))
    for source in ("odir", "eyepacs"):
        for key in ("qwk", "referable_auc", "referable_sensitivity", "referable_specificity"):
            assert f"test.{source}.{key}" in shown and f"test.{source}.{key}_ci_low" in shown
    assert shown["test.odir.n_images"] == 40 and shown["test.eyepacs.n_images"] == 80
    assert shown["val.qwk"] == 0.5 and "test.qwk" in shown  # the existing keys stay
    # sensitivity and specificity of each source at the one threshold chosen on the pooled val
    odir = np.array(test.sources) == "odir"
    score = test.probs[:, 2:].sum(axis=1)
    sens, spec = sensitivity_specificity(test.y_true[odir] >= 2, score[odir], decision.threshold)
    assert metrics["odir"]["referable_sensitivity"] == pytest.approx(sens, abs=1e-6)
    assert metrics["odir"]["referable_specificity"] == pytest.approx(spec, abs=1e-6)
    # the bootstrap resamples the source's own patients: the same as scoring the source alone
    assert metrics["odir"] == headline(subset(test, odir), decision, cfg, seed=3)
    table = pd.read_csv(tmp_path / "predictions.csv")
    assert table.columns[:3].tolist() == ["id", "patient", "source"]
    assert "Per source, at the same operating point" in (tmp_path / "classification_report.txt").read_text()


def test_one_source_keeps_its_block_equal_to_the_overall_figures() -> None:
    test = _two_sources(60, 4)
    test = Predictions(test.ids, test.patients, test.y_true, test.probs, sources=["demo"] * 60)
    cfg = EvaluateConfig(bootstrap=30)
    blocks = by_source(test, Decision(0.4), cfg, seed=1)
    assert list(blocks) == ["demo"] and blocks["demo"] == headline(test, Decision(0.4), cfg, seed=1)
    assert by_source(Predictions(test.ids, test.patients, test.y_true, test.probs), Decision(0.4), cfg) == {}


def test_metric_keys_list_every_key_of_a_metrics_block(tmp_path: Path) -> None:
    """params.yaml refuses a source named like one of METRIC_KEYS, which must therefore be complete."""
    val, test = _two_sources(60, 5), _two_sources(60, 6)
    cfg = EvaluateConfig(bootstrap=10)
    decision = Decision.from_operating_point(choose_threshold(val.y_true, val.probs, cfg))
    metrics = write_evaluation(tmp_path, test, decision, cfg)
    assert set(metrics) - {"odir", "eyepacs"} <= METRIC_KEYS


def test_evaluate_stage_writes_test_and_val_per_source(tmp_path: Path) -> None:
    cache = write_fake_cache(tmp_path / "cache", {"train": 10, "val": 40, "test": 40})
    for split in ("val", "test"):
        table = pd.read_csv(cache / f"{split}.csv")
        table.insert(1, "source", np.where(np.arange(len(table)) % 4 == 0, "odir", "demo"))
        table.to_csv(cache / f"{split}.csv", index=False)
    torch.manual_seed(0)
    meta = CheckpointMeta(model_name="resnet10t", num_classes=5, image_size=64, mean=(0.5,) * 3, std=(0.25,) * 3,
                          preprocess=PreprocessConfig(cache_size=64), class_names=GRADE_NAMES, referable_grade=2,
                          epoch=1, stage=2)
    model = timm.create_model("resnet10t", num_classes=5)
    save_checkpoint(tmp_path / "best_model.pth", model, meta)
    evaluate_cached(tmp_path / "best_model.pth", cache, tmp_path / "results", EvaluateConfig(bootstrap=20), 0)
    shown = _flat(json.loads((tmp_path / "results" / "metrics.json").read_text()))
    for split in ("test", "val"):
        assert shown[f"{split}.odir.n_images"] == 10 and shown[f"{split}.demo.n_images"] == 30
        assert f"{split}.odir.referable_auc_ci_high" in shown and f"{split}.referable_auc" in shown
    assert shown["val.n_images"] == 40 and "test.val_qwk" in shown
    point = json.loads((tmp_path / "results" / "operating_point.json").read_text())
    assert point["val_n_images"] == 40  # one operating point, chosen on the pooled val split
    assert shown["test.referable_threshold"] == point["threshold"]


def test_a_model_trained_on_one_source_chooses_on_its_val_and_is_tested_on_every_source(tmp_path: Path) -> None:
    """train.sources: the operating point comes from that source's val photos; test covers all sources."""
    cache = write_fake_cache(tmp_path / "cache", {"train": 10, "val": 40, "test": 40})
    for split in ("val", "test"):
        table = pd.read_csv(cache / f"{split}.csv")
        table.insert(1, "source", np.where(np.arange(len(table)) % 4 == 0, "odir", "demo"))
        table.to_csv(cache / f"{split}.csv", index=False)
    torch.manual_seed(0)
    meta = CheckpointMeta(model_name="resnet10t", num_classes=5, image_size=64, mean=(0.5,) * 3, std=(0.25,) * 3,
                          preprocess=PreprocessConfig(cache_size=64), class_names=GRADE_NAMES, referable_grade=2,
                          epoch=1, stage=2, params={"train": {"sources": ["odir"]}})
    save_checkpoint(tmp_path / "best_model.pth", timm.create_model("resnet10t", num_classes=5), meta)
    evaluate_cached(tmp_path / "best_model.pth", cache, tmp_path / "results", EvaluateConfig(bootstrap=20), 0)
    shown = _flat(json.loads((tmp_path / "results" / "metrics.json").read_text()))
    assert shown["val.n_images"] == 10 and "val.demo.n_images" not in shown  # val: odir's photos only
    assert shown["test.n_images"] == 40 and shown["test.demo.n_images"] == 30 and shown["test.odir.n_images"] == 10
    assert json.loads((tmp_path / "results" / "operating_point.json").read_text())["val_n_images"] == 10
    val = pd.read_csv(tmp_path / "results" / "val_predictions.csv")  # what the point was chosen on
    assert len(val) == 10 and set(val["source"]) == {"odir"} and val["referral_threshold"].nunique() == 1

    meta = dataclasses.replace(meta, params={"train": {"sources": ["aptos"]}})
    save_checkpoint(tmp_path / "other.pth", timm.create_model("resnet10t", num_classes=5), meta)
    with pytest.raises(ValueError, match=r"no photographs of source\(s\) \['aptos'\].*it holds \['demo', 'odir'\]"):
        evaluate_cached(tmp_path / "other.pth", cache, tmp_path / "r2", EvaluateConfig(bootstrap=0), 0)
