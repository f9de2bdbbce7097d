"""``python -m dr_core.predict``: grade raw fundus photographs with a trained checkpoint.

    python -m dr_core.predict --model-path models/best_model.pth --input photo.jpg --output preds.csv
    python -m dr_core.predict --model-path models/best_model.pth --input photos/ --output preds.csv \\
        --gradcam-dir heatmaps --threshold-from results/operating_point.json --on-error skip

Heavy libraries (torch, timm) are imported after the arguments are parsed, so ``--help`` is quick.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from dr_core.config.params import BAD_IMAGE_POLICIES
from dr_core.runtime.logs import setup_logging

log = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dr_core.predict",
                                     description="Grade raw fundus photographs with a trained checkpoint.")
    parser.add_argument("--model-path", type=Path, required=True, help="checkpoint (models/best_model.pth)")
    parser.add_argument("--input", type=Path, required=True, help="one photo, or a folder of photos")
    parser.add_argument("--output", type=Path, required=True, help="CSV to write")
    parser.add_argument("--gradcam-dir", type=Path, help="write Grad-CAM overlays (PNG) here")
    parser.add_argument("--tta", action="store_true", help="average the eight flips/rotations")
    parser.add_argument("--on-error", choices=BAD_IMAGE_POLICIES, default="error",
                        help="unreadable photo in a folder: stop (error) or report and continue (skip)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=float, help="referable-score threshold (default 0.5)")
    group.add_argument("--threshold-from", type=Path,
                       help="the operating point chosen on validation: results/operating_point.json "
                            "(or results/metrics.json)")
    parser.add_argument("--batch-size", type=int, default=16, help="photos per forward pass")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where to run the model; auto: CUDA when available")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    import torch

    from dr_core.config import EvaluateConfig
    from dr_core.evaluation.predictions import Decision
    from dr_core.evaluation.predict import (PhotoError, blend_fellow_eyes_table, list_photos, predict_photos,
                                            read_operating_point, write_gradcams)
    from dr_core.evaluation.report import PREDICTION_FORMAT
    from dr_core.models.checkpoint import CheckpointError, load_checkpoint

    try:
        model, meta = load_checkpoint(args.model_path)
        photos = list_photos(args.input)
        threshold, cutpoints, weight, scope = read_operating_point(args.threshold_from) if args.threshold_from \
            else (args.threshold if args.threshold is not None else 0.5, None, 0.0, "referable")
        decision = Decision(threshold, cutpoints)
        # the grade the checkpoint's run called referable; the blending its operating point was chosen with
        cfg = EvaluateConfig(referable_grade=meta.referable_grade, batch_size=args.batch_size, tta=args.tta,
                             fellow_eye_weight=weight, fellow_eye_scope=scope)
        cfg.validate()
        device = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
            "cpu" if args.device == "auto" else args.device)
        log.info("%s: %s, %d classes, input %d px; %d photo(s); referable = grade >= %d with score >= %.4f",
                 args.model_path, meta.model_name, meta.num_classes, meta.image_size, len(photos),
                 cfg.referable_grade, threshold)
        root = args.input if args.input.is_dir() else None
        table, skipped = predict_photos(model, meta, photos, decision, cfg, root=root, device=device,
                                        on_error=args.on_error)
        if cfg.fellow_eye_weight > 0 and not table.empty:
            table = blend_fellow_eyes_table(table, cfg, decision, meta.class_names)
        if args.gradcam_dir is not None and not table.empty:
            n = write_gradcams(model, meta, table, photos, root, args.gradcam_dir, args.batch_size, device)
            log.info("wrote %d Grad-CAM overlay(s) to %s", n, args.gradcam_dir)
    except (CheckpointError, PhotoError, FileNotFoundError, ValueError) as err:
        log.error("%s", err)
        return 1
    if table.empty:
        log.error("none of the %d photo(s) could be graded", len(photos))
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.output, index=False, float_format=PREDICTION_FORMAT)
    counts = table["grade_name"].value_counts().to_dict()
    log.info("graded %d photo(s) -> %s; %d referable; grades %s", len(table), args.output,
             int(table["referable"].sum()), counts)
    if skipped:
        log.warning("skipped %d unreadable photo(s): %s", len(skipped), ", ".join(p.name for p, _ in skipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
