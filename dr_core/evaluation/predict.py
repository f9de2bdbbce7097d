"""Grade raw fundus photographs with a trained checkpoint, optionally with Grad-CAM overlays.

    python -m dr_core.predict --model-path models/best_model.pth --input photo.jpg --output preds.csv
    python -m dr_core.predict --model-path models/best_model.pth --input photos/ --output preds.csv \\
        --gradcam-dir heatmaps --threshold-from results/operating_point.json --on-error skip

Each photo goes through the checkpoint's own preprocessing (crop, CLAHE, ... as cached for
training), then its resize and normalisation, so raw photos are graded exactly as the test split was.
When the operating point was chosen with fellow-eye blending (``evaluate.fellow_eye_weight``), the
same blending is applied across the photos given, pairing EyePACS names (``10_left``/``10_right``);
Grad-CAM overlays are drawn after it, so their captions show the score the referral was decided on.

Every photo is checked before any is graded (:func:`screen_photos`, the split stage's checks): an
unreadable one stops the run at once, or is left out, and one that shows no colour fundus is not
graded but listed with the reason in the ``quality`` column (:func:`with_ungraded`).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from dr_core.data.augment import build_transforms, to_tensor
from dr_core.models.checkpoint import CheckpointMeta
from dr_core.config import EvaluateConfig, PreprocessConfig
from dr_core.config.params import BAD_IMAGE_POLICIES
from dr_core.evaluation.cutpoints import decide_grades
from dr_core.evaluation.eyes import fellow_eye_of, fellow_eye_predictions
from dr_core.data.ingest import EYEPACS_ID, content_problem, decode_reduced, too_large, truncation
from dr_core.evaluation.gradcam import feature_module, grad_cam, side_by_side
from dr_core.evaluation.inference import predict_probs
from dr_core.evaluation.metrics import referable_score
from dr_core.evaluation.predictions import Decision
from dr_core.data.preprocess import preprocess_image, read_fundus
from dr_core.evaluation.report import PREDICTION_FORMAT
from dr_core.runtime.io import file_sha256

log = logging.getLogger(__name__)

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
# Neighbouring pixels of a photograph are alike, those of noise are not: correlation >= 0.93 for every
# third photo of eyepacs-dev and odir-dev (1,905, reduced decode), about 0 for colour noise (PNG or JPEG).
MIN_NEIGHBOUR_CORRELATION = 0.5


class PhotoError(ValueError):
    """A photograph cannot be read or preprocessed."""


def list_photos(input_path: Path) -> list[Path]:
    """The photo itself, or the photos directly inside a folder (sorted by name)."""
    if input_path.is_file():
        return [input_path]
    if not input_path.is_dir():
        raise FileNotFoundError(f"{input_path}: no such photo or folder")
    photos = sorted(p for p in input_path.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
    if not photos:
        raise FileNotFoundError(f"{input_path}: no photos ({', '.join(PHOTO_SUFFIXES)}) in this folder")
    return photos


def noise_problem(image: np.ndarray) -> str:
    """Reason if a decoded (H, W, 3) image is noise rather than a photograph, else "".

    :func:`dr_core.data.ingest.content_problem` passes colour noise (bright, varied and coloured), so
    predict adds this check: noise has no spatial structure.
    """
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    pairs = ((gray[:, :-1], gray[:, 1:]), (gray[:-1, :], gray[1:, :]))  # horizontal and vertical neighbours
    corr = min(float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) for a, b in pairs)
    if not corr >= MIN_NEIGHBOUR_CORRELATION:  # NaN (a uniform image) too
        return (f"no fundus: looks like noise (neighbouring pixels correlate {corr:.2f}, photographs "
                f">= {MIN_NEIGHBOUR_CORRELATION})")
    return ""


def screen_photo(path: Path) -> tuple[str, str]:
    """``(unreadable, quality)``: why the photo cannot be read, or why it is no colour fundus photograph
    (:func:`dr_core.data.ingest.content_problem`, as the split stage checks training photos, and
    :func:`noise_problem`); "" when fine. Cheap: JPEGs are decoded at 1/8 scale or so."""
    try:
        data = path.read_bytes()
    except OSError as err:
        return f"unreadable: {err.strerror or err}", ""
    if not data:
        return "unreadable: empty file (0 bytes)", ""
    reason = truncation(data)
    if reason:
        return reason, ""
    try:
        image = decode_reduced(data)
    except cv2.error:
        image = None
    if image is None:
        return too_large(data) or "unreadable: OpenCV cannot decode it (corrupt, or not an image)", ""
    return "", content_problem(image) or noise_problem(image)


def screen_photos(photos: Sequence[Path], on_error: str = "error"
                  ) -> tuple[list[Path], list[tuple[Path, str]], list[tuple[Path, str]]]:
    """Check every photo before any is graded.

    Returns:
        The photos to grade, the unreadable ones and the ones that show no colour fundus (both with the reason).

    Raises:
        PhotoError: with ``on_error="error"``, listing every unreadable photo, before any work on the others.
    """
    gradable, unreadable, flagged = [], [], []
    for path in tqdm(photos, desc="checking photos", unit="photo", disable=None):
        bad, quality = screen_photo(path)
        if bad:
            unreadable.append((path, bad))
        elif quality:
            flagged.append((path, quality))
        else:
            gradable.append(path)
    if unreadable and on_error == "error":
        items = [f"{path} ({reason})" for path, reason in unreadable]
        more = f" and {len(items) - 10} more" if len(items) > 10 else ""
        raise PhotoError(f"{len(unreadable)} of {len(photos)} photo(s) cannot be read: {', '.join(items[:10])}{more}; "
                         "nothing was graded. Replace or remove them, or pass --on-error skip to grade the others")
    for path, reason in unreadable:
        log.warning("skipping %s: %s", path, reason)
    return gradable, unreadable, flagged


def with_ungraded(table: pd.DataFrame, flagged: Sequence[tuple[Path, str]], photos: Sequence[Path],
                  root: Path | None) -> pd.DataFrame:
    """``table`` (the graded photos) plus a row for each photo in ``flagged`` (no colour fundus): the
    ``quality`` column gives the reason, and the grade, probability and referable columns stay empty, so
    that such a photo is never read as graded, referable or not. Rows follow the order of ``photos``."""
    graded = table.assign(quality="")
    extra = pd.DataFrame({"file": [photo_name(p, root) for p, _ in flagged],
                          "quality": [reason for _, reason in flagged]})
    if "patient" in graded.columns:
        extra.insert(1, "patient", [photo_patient(f) for f in extra["file"]])
    out = pd.concat([graded, extra], ignore_index=True) if len(extra) else graded
    out = out.astype({"grade": "Int64", "referable": "boolean"})  # empty, not NaN-as-float, when ungraded
    order = {photo_name(p, root): i for i, p in enumerate(photos)}
    return out.sort_values("file", key=lambda files: files.map(order), kind="stable").reset_index(drop=True)


def load_photo(path: Path, cfg: PreprocessConfig) -> np.ndarray:
    """Read and preprocess one photo to uint8 (S, S, 3); :class:`PhotoError` names the file."""
    try:
        return preprocess_image(read_fundus(path, target_size=cfg.cache_size), cfg)
    except (OSError, ValueError, cv2.error) as err:
        message = str(err) if str(path) in str(err) else f"{path}: {err}"
        raise PhotoError(message) from err


def photo_name(path: Path, root: Path | None) -> str:
    """The ``file`` column: the path relative to the input folder, or as given for a single photo."""
    return str(path.relative_to(root)) if root is not None else str(path)


def predict_photos(model: nn.Module, meta: CheckpointMeta, photos: Sequence[Path], decision: Decision,
                   cfg: EvaluateConfig, root: Path | None = None, device: str | torch.device = "cpu",
                   on_error: str = "error") -> tuple[pd.DataFrame, list[tuple[Path, str]]]:
    """Grade photos in batches.

    Args:
        model, meta: from :func:`dr_core.models.checkpoint.load_checkpoint`.
        photos: photo paths.
        decision: referable when the referable score is at least ``threshold``; grade ``cutpoints``
            on the expected grade (``grade_cutpoints`` of the evaluate stage's operating point) or,
            without them, the most probable grade.
        cfg: ``referable_grade`` (grades at or above it are referable), ``batch_size`` (photos
            preprocessed and graded at a time) and ``tta`` (average the eight flips/rotations).
        root: folder the ``file`` column is relative to (``None``: the path as given).
        device: torch device.
        on_error: ``"error"`` stops at the first unreadable photo, ``"skip"`` reports it and goes on.

    Returns:
        One row per graded photo (file, grade, grade_name, prob_k, referable_score, referable)
        and the skipped photos with the reason.
    """
    if on_error not in BAD_IMAGE_POLICIES:
        raise ValueError(f"on_error must be one of {list(BAD_IMAGE_POLICIES)}, got {on_error!r}")
    names = list(meta.class_names)
    rows: list[dict[str, Any]] = []
    skipped: list[tuple[Path, str]] = []
    for start in tqdm(range(0, len(photos), cfg.batch_size), desc="grading", unit="batch", disable=None):
        batch_paths, images = [], []
        for path in photos[start:start + cfg.batch_size]:
            try:
                images.append(load_photo(path, meta.preprocess))
                batch_paths.append(path)
            except PhotoError as err:
                if on_error == "error":
                    raise PhotoError(f"{err} (--on-error skip grades the other photos)") from err
                log.warning("skipping %s", err)
                skipped.append((path, str(err)))
        if not images:
            continue
        stack = np.stack(images)  # (B, S, S, 3) uint8
        probs = predict_probs(model, stack, meta, batch_size=cfg.batch_size, device=device, tta=cfg.tta)
        scores = referable_score(probs, cfg.referable_grade)
        grades = decide_grades(probs, decision.cutpoints)
        for path, p, score, grade in zip(batch_paths, probs, scores, grades):
            grade = int(grade)
            file = photo_name(path, root)
            rows.append({"file": file, "grade": grade, "grade_name": names[grade],
                         **{f"prob_{k}": float(v) for k, v in enumerate(p)},
                         "referable_score": float(score), "referable": bool(score >= decision.threshold)})
    columns = ["file", "grade", "grade_name", *(f"prob_{k}" for k in range(len(names))), "referable_score",
               "referable"]
    return pd.DataFrame(rows, columns=columns), skipped


def write_gradcams(model: nn.Module, meta: CheckpointMeta, table: pd.DataFrame, photos: Sequence[Path],
                   root: Path | None, out_dir: Path, batch_size: int = 16,
                   device: str | torch.device = "cpu") -> int:
    """Write ``<photo stem>_gradcam.png`` into ``out_dir`` for every photo in ``table`` (the final
    table of :func:`predict_photos`, after any fellow-eye blending): the preprocessed photo beside its
    Grad-CAM overlay, captioned with the row's grade and referable score. Returns the count."""
    cfg = meta.preprocess
    transform = build_transforms(meta.image_size, meta.mean, meta.std, "none")
    by_file = {photo_name(p, root): p for p in photos}
    rows = [row for _, row in table.iterrows()]
    out_dir.mkdir(parents=True, exist_ok=True)
    target_module = None
    for start in tqdm(range(0, len(rows), batch_size), desc="grad-cam", unit="batch", disable=None):
        batch = rows[start:start + batch_size]
        images = [load_photo(by_file[row["file"]], cfg) for row in batch]
        x = torch.stack([to_tensor(transform(image=im)["image"]) for im in images]).to(device)
        target_module = target_module or feature_module(model, x)
        maps, _ = grad_cam(model, x, target_module=target_module, head=meta.head, num_classes=meta.num_classes)
        for row, image, cam in zip(batch, images, maps):
            top = row[f"prob_{int(row['grade'])}"]
            caption = (f"{row['grade_name']} (p={top:.2f}), "
                       f"referable score {row['referable_score']:.2f}")
            if "referral_threshold" in row.index:  # the rule that decided referral, beside the grade
                caption += f" {'>=' if row['referable'] else '<'} {row['referral_threshold']:.2f}: " + \
                    ("refer" if row["referable"] else "no referral")
            if "referable_score_own" in row.index:
                caption += f" (own {row['referable_score_own']:.2f}, with fellow eye)"
            panel = side_by_side(image, cam, caption)
            name = out_dir / f"{by_file[row['file']].stem}_gradcam.png"
            cv2.imwrite(str(name), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
    return len(rows)


def read_operating_point(path: Path, checkpoint: Path | None = None) -> tuple[float, list[float] | None, float, str]:
    """``--operating-point``, read once: threshold, grade cut-points (None: argmax) and fellow-eye
    weight and scope. A file without ``threshold`` (the evaluate stage's ``metrics.json``, which holds
    the threshold only) gives way to the ``operating_point.json`` beside it when there is one.

    Raises:
        ValueError: the point records the sha256 of another checkpoint than ``checkpoint``: a threshold
            chosen for one model means nothing for another.
    """
    data = _read_json(path)
    beside = path.with_name("operating_point.json")
    if "threshold" not in data and beside != path and beside.is_file():
        log.info("%s: using %s beside it (threshold, grade cut-points, fellow-eye blending)", path, beside)
        path, data = beside, _read_json(beside)
    elif "threshold" not in data:
        log.warning("%s holds the referable threshold only: grades are argmax and no fellow-eye blending "
                    "is applied; pass results/operating_point.json for the evaluation's cut-points and "
                    "blending", path)
    if checkpoint is not None:
        check_point_matches(data, path, checkpoint)
    cuts = data.get("grade_cutpoints")
    weight, scope = fellow_eye_of(data, path)
    return _threshold_of(data, path), [float(c) for c in cuts] if isinstance(cuts, list) else None, weight, scope


def check_point_matches(data: dict, path: Path, checkpoint: Path) -> None:
    """Refuse an operating point chosen for another checkpoint; warn when it predates the digest."""
    recorded = data.get("model_sha256")
    if recorded is None:
        log.warning("%s does not record which checkpoint it was chosen for (written before drgrade 0.2): "
                    "make sure it belongs to %s", path, checkpoint)
        return
    actual = file_sha256(checkpoint)
    if recorded != actual:
        raise ValueError(f"{path} was chosen on val for another checkpoint (sha256 {recorded[:12]}...), not "
                         f"{checkpoint} (sha256 {actual[:12]}...): its threshold and cut-points would not mean the "
                         "same. Pass the operating point written with this model, or set --threshold yourself")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read it as JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _threshold_of(data: dict, path: Path) -> float:
    if isinstance(data.get("threshold"), (int, float)):
        return float(data["threshold"])
    for section in (data, *(v for v in data.values() if isinstance(v, dict))):
        if isinstance(section.get("referable_threshold"), (int, float)):
            return float(section["referable_threshold"])
    raise ValueError(f"{path}: no threshold or referable_threshold; pass results/operating_point.json "
                     "or results/metrics.json written by the evaluate stage")


def threshold_from_metrics(path: Path) -> float:
    """The referable threshold from the evaluate stage's ``operating_point.json`` (``threshold``)
    or ``metrics.json`` (``referable_threshold``, top level or under a split)."""
    return _threshold_of(_read_json(path), path)


def photo_patient(file: str) -> str:
    """The patient of an EyePACS-named photo (``10_left.jpeg`` -> ``10``); else the photo itself."""
    stem = Path(file).stem
    match = re.fullmatch(EYEPACS_ID, stem, flags=re.IGNORECASE)
    return match.group(1) if match else stem


def blend_fellow_eyes_table(table: pd.DataFrame, cfg: EvaluateConfig, decision: Decision,
                            names: Sequence[str]) -> pd.DataFrame:
    """Apply the evaluation's fellow-eye blending (``cfg.fellow_eye_weight`` and ``_scope``) to
    :func:`predict_photos`' table, then ``decision``: photos named ``<patient>_left`` /
    ``<patient>_right`` are one patient; other photos keep their own score. Adds a ``patient``
    column, and ``referable_score_own``: the photo's score before blending."""
    weight, scope = cfg.fellow_eye_weight, cfg.fellow_eye_scope
    table = table.copy()
    table.insert(1, "patient", [photo_patient(f) for f in table["file"]])
    cols = [f"prob_{k}" for k in range(len(names))]
    probs, score = fellow_eye_predictions(table[cols].to_numpy(), table["patient"].tolist(), weight, scope,
                                          cfg.referable_grade)
    alone = int((table["patient"].map(table["patient"].value_counts()) == 1).sum())
    log.info("fellow-eye blending as at evaluation (weight %.2f, scope %s): %d of %d photo(s) have a fellow "
             "eye (EyePACS names <patient>_left/_right)", weight, scope, len(table) - alone, len(table))
    if alone:
        log.warning("%d photo(s) have no fellow eye among the input: their referable score is their own, "
                    "while the threshold was chosen on blended scores", alone)
    table.insert(table.columns.get_loc("referable_score") + 1, "referable_score_own", table["referable_score"])
    table["referable_score"] = score
    table["referable"] = score >= decision.threshold
    if scope == "all":
        table[cols] = probs
        table["grade"] = decide_grades(probs, decision.cutpoints)
        table["grade_name"] = [names[g] for g in table["grade"]]
    return table
