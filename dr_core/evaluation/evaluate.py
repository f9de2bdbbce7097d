"""Evaluate a checkpoint: on the cached test split (the pipeline stage) or on any labelled folder.

Outside the pipeline, the guide's interface works on raw photos in the APTOS or EyePACS layout,
applying the checkpoint's own preprocessing::

    python -m dr_core.evaluate --labels-csv CSV --img-dir DIR --model-path models/best_model.pth \\
        --output-dir results_external

It writes the same files as the stage. Metric names are nested under ``external`` instead of
``test`` (so ``external.qwk``), keeping both kinds of result apart in ``dvc metrics show``. The pipeline's
``external`` stage does the same for each set of ``evaluate.external`` (:func:`evaluate_folder` with the
training photographs, which it refuses to evaluate on).
The referable-DR threshold is never tuned on the evaluated photos: it comes from
``--threshold`` or from the pipeline's ``results/operating_point.json`` (chosen on val), whose
fellow-eye blending (``evaluate.fellow_eye_weight`` and ``_scope``) is then applied too.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dr_core.config import DataConfig, EvaluateConfig, PreprocessConfig
from dr_core.data.dataset import load_cache, source_rows
from dr_core.evaluation.by_source import by_source, headline
from dr_core.evaluation.eyes import fellow_eye_predictions
from dr_core.evaluation.inference import predict_probs
from dr_core.evaluation.predictions import Decision, Predictions
from dr_core.models.checkpoint import CheckpointMeta, load_checkpoint
from dr_core.evaluation.report import (OUTPUT_FILES, choose_cutpoints, choose_threshold, write_evaluation,
                                       write_predictions)
from dr_core.runtime.io import file_sha256
from dr_core.runtime.progress import progress

log = logging.getLogger(__name__)

BAD_IMAGES = "bad_images.csv"  # evaluate_folder's list of the photos left out
VAL_PREDICTIONS = "val_predictions.csv"  # evaluate_cached: the val photos the point was chosen on


def folder_output(rel: str) -> bool:
    """Whether :func:`evaluate_folder` writes this path (relative to its ``out_dir``)."""
    return rel in OUTPUT_FILES or rel == BAD_IMAGES or re.fullmatch(r"plots/roc_grade_\d+\.csv", rel) is not None


def evaluate_cached(model_path: Path, cache_dir: Path, out_dir: Path, cfg: EvaluateConfig,
                    seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """The evaluate stage: threshold and cut-points chosen on the cached val split (all sources pooled), metrics
    on the cached test split, overall and per source, and the same headline figures for val (``val`` block).

    A model trained on some sources only (``train.sources``, recorded in its checkpoint) has its point chosen
    on the val photos of those sources, as its user would, and is tested on every source's test photos."""
    model, meta = load_checkpoint(model_path)
    trained_on = tuple(meta.params.get("train", {}).get("sources") or ())
    probs, scores, rows = {}, {}, {}
    for split in ("val", "test"):
        images, rows[split] = load_cache(cache_dir, split)
        if split == "val" and trained_on:
            keep = source_rows(rows[split], trained_on, f"{cache_dir / 'val.csv'} (the sources {model_path} "
                                                        "was trained on)")
            images, rows[split] = images[keep], rows[split].iloc[keep].reset_index(drop=True)
        log.info("predicting %d %s images%s", len(images), split, " with TTA" if cfg.tta else "")
        probs[split], scores[split] = _predict(model, images, meta, rows[split]["patient"].tolist(), cfg, device)
    val_grades = rows["val"]["grade"].to_numpy()
    cutpoints = choose_cutpoints(val_grades, probs["val"], cfg)
    sources = rows["val"]["source"].tolist() if "source" in rows["val"].columns else None
    point = choose_threshold(val_grades, probs["val"], cfg, cutpoints, scores["val"], sources)
    point["grade_cutpoints"] = cutpoints
    point["model"] = str(model_path)
    point["model_sha256"] = file_sha256(model_path)  # predict and evaluate refuse it with another checkpoint
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "operating_point.json").write_text(json.dumps(point, indent=2) + "\n")
    decision = Decision.from_operating_point(point)
    preds = {split: Predictions(rows[split]["id"].tolist(), rows[split]["patient"].tolist(),
                                rows[split]["grade"].to_numpy(), probs[split], scores[split],
                                rows[split]["source"].tolist() if "source" in rows[split].columns else None)
             for split in ("val", "test")}
    val = {**headline(preds["val"], decision, cfg, seed), **by_source(preds["val"], decision, cfg, seed)}
    write_predictions(out_dir / VAL_PREDICTIONS, preds["val"], decision, cfg)
    return write_evaluation(out_dir, preds["test"], decision, cfg, meta.class_names, "test", seed, {"val": val})


def _predict(model: torch.nn.Module, images: np.ndarray, meta: CheckpointMeta, patients: list,
             cfg: EvaluateConfig, device: str) -> tuple[np.ndarray, np.ndarray]:
    """Grade probabilities and referable score of each photo, with the fellow eye's evidence."""
    probs = predict_probs(model, images, meta, cfg.batch_size, device, cfg.tta)
    return fellow_eye_predictions(probs, patients, cfg.fellow_eye_weight, cfg.fellow_eye_scope,
                                  cfg.referable_grade)


def load_raw_images(paths: list[Path], preprocess: PreprocessConfig) -> np.ndarray:
    """Read and preprocess raw photos exactly as the cache was built for the checkpoint."""
    from dr_core.data.preprocess import preprocess_file

    size = preprocess.cache_size
    out = np.zeros((len(paths), size, size, 3), np.uint8)
    for i, path in enumerate(progress(paths, desc="preprocess", unit="img", leave=False)):
        out[i] = preprocess_file(Path(path), preprocess)
    return out


def evaluate_folder(labels_csv: Path, img_dir: Path, model_path: Path, out_dir: Path, cfg: EvaluateConfig,
                    decision: Decision, data: DataConfig | None = None, device: str = "cpu",
                    seed: int = 0, training: pd.DataFrame | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint on every labelled photo of a folder (no split, nothing tuned on it).

    ``decision`` holds the referable threshold and the grade cut-points (from the pipeline's
    ``operating_point.json``, chosen on val; none: the most probable grade). Photos are validated as
    the sources stage does; with ``data.on_bad_image: skip`` the unusable ones are left out and listed
    in ``<out_dir>/bad_images.csv``. ``training`` (:func:`dr_core.data.sources.training_photos`): the
    photographs the model was developed on; a folder sharing any of them is refused before the model runs.

    Raises:
        DataError: bad labels or photographs, or photographs shared with ``training`` (named).
    """
    from dr_core.data.ingest import read_labels
    from dr_core.data.sources import refuse_shared_photos, usable_photographs

    data = data or DataConfig()
    model, meta = load_checkpoint(model_path)
    labels = read_labels(labels_csv, data, meta.num_classes)
    rows, checks, bad = usable_photographs(labels.table, img_dir, data, labels_csv, workers=0)
    if training is not None:
        refuse_shared_photos(rows.assign(digest=[c.digest for c in checks]), img_dir, training, labels_csv)
    out_dir.mkdir(parents=True, exist_ok=True)
    bad[["id", "file", "reason"]].to_csv(out_dir / BAD_IMAGES, index=False)
    images = load_raw_images([img_dir / f for f in rows["file"]], meta.preprocess)
    probs, score = _predict(model, images, meta, rows["patient"].tolist(), cfg, device)
    preds = Predictions(rows["id"].tolist(), rows["patient"].tolist(), rows["grade"].to_numpy(), probs, score)
    return write_evaluation(out_dir, preds, decision, cfg, meta.class_names, "external", seed)
