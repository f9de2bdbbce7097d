"""``python -m dr_core.predict``: grade raw fundus photographs with a trained checkpoint.

    python -m dr_core.predict --input photo.jpg --output preds.csv
    python -m dr_core.predict --model-path models/best_model.pth --input photos/ --output preds.csv \\
        --gradcam-dir heatmaps --operating-point results/operating_point.json --on-error skip

Every photo is checked before any is graded (see ``--help``); outputs never overwrite an input.
Heavy libraries (torch, timm) are imported after the arguments are parsed, so ``--help`` is quick.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from dr_core.config.params import BAD_IMAGE_POLICIES
from dr_core.runtime.logs import setup_logging

log = logging.getLogger(__name__)

DEFAULT_POINT = Path("results/operating_point.json")


EPILOG = """\
Every photo is checked before any is graded, as the split stage checks training photos. An unreadable
one (cannot be read or decoded, cut off) stops the run before any grading (--on-error error), listing
all of them, or is left out of the CSV (--on-error skip). A photo that shows no fundus (black, nearly
uniform, such as noise) or is grayscale is not graded: it gets a row whose `quality` column gives the
reason and whose grade, grade_name, prob_k, referable_score and referable columns are empty. Graded
photos have an empty `quality`.

Referral is decided on the referable score (the probability of a referable grade), never on the grade:
a row is referable when referable_score >= the threshold in its referral_threshold column. The threshold
and grade cut-points come from the operating point chosen on val by the pipeline (--operating-point,
default results/operating_point.json when it was written for this checkpoint). Without one, referral falls
back to a score of 0.5 and grades to the most probable class, and the log says so.

--output and the Grad-CAM overlays never overwrite an input (a photo, the checkpoint, the operating
point), and --gradcam-dir is never the --input folder or inside it."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dr_core.predict",
                                     description="Grade raw fundus photographs with a trained checkpoint.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", type=Path, default=Path("models/best_model.pth"),
                        help="checkpoint (default: models/best_model.pth)")
    parser.add_argument("--input", type=Path, required=True, help="one photo, or a folder of photos")
    parser.add_argument("--output", type=Path, required=True,
                        help="CSV to write: one row per photo (file, grade, grade_name, prob_k, referable_score, "
                             "referable, quality)")
    parser.add_argument("--gradcam-dir", type=Path, help="write Grad-CAM overlays (PNG) of the graded photos here")
    parser.add_argument("--tta", action="store_true", help="average the eight flips/rotations")
    parser.add_argument("--on-error", choices=BAD_IMAGE_POLICIES, default="error",
                        help="unreadable photo: stop before grading any (error) or leave it out (skip)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=float,
                       help="referable-score threshold, instead of an operating point (grades: most probable)")
    group.add_argument("--operating-point", "--threshold-from", dest="operating_point", type=Path,
                       help="the threshold and grade cut-points chosen on val by the pipeline "
                            f"(default: {DEFAULT_POINT} when it was written for this checkpoint)")
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
                                            screen_photos, with_ungraded, write_gradcams)
    from dr_core.evaluation.report import PREDICTION_FORMAT
    from dr_core.models.checkpoint import CheckpointError, load_checkpoint
    from dr_core.runtime.outputs import OutputError

    try:
        model, meta = load_checkpoint(args.model_path)
        listed = list_photos(args.input)
        _refuse_inputs(args, listed)
        photos, unreadable, flagged = screen_photos(listed, args.on_error)
        threshold, cutpoints, weight, scope = _operating_point(args)
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
        skipped = unreadable + skipped
        if cfg.fellow_eye_weight > 0 and not table.empty:
            table = blend_fellow_eyes_table(table, cfg, decision, meta.class_names)
        if not table.empty:
            # the rule beside every grade: referable = referable_score >= this
            table.insert(table.columns.get_loc("referable") + 1, "referral_threshold", threshold)
        if args.gradcam_dir is not None and not table.empty:
            n = write_gradcams(model, meta, table, photos, root, args.gradcam_dir, args.batch_size, device)
            log.info("wrote %d Grad-CAM overlay(s) to %s", n, args.gradcam_dir)
    except (CheckpointError, PhotoError, OutputError, FileNotFoundError, ValueError) as err:
        log.error("%s", err)
        return 1
    if table.empty and not flagged:
        log.error("none of the %d photo(s) could be graded", len(listed))
        return 1
    graded = len(table)
    table = with_ungraded(table, flagged, listed, root)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.output, index=False, float_format=PREDICTION_FORMAT)
    counts = table["grade_name"].value_counts().to_dict()
    log.info("graded %d photo(s) -> %s; %d referable; grades %s", graded, args.output,
             int(table["referable"].sum()), counts)
    if flagged:
        log.warning("%d photo(s) not graded, no colour fundus photograph (reason in the quality column): %s",
                    len(flagged), ", ".join(f"{p.name} ({reason})" for p, reason in flagged[:10]))
    if skipped:
        log.warning("skipped %d unreadable photo(s): %s", len(skipped), ", ".join(p.name for p, _ in skipped))
    return 0


def _operating_point(args: argparse.Namespace) -> tuple[float, list[float] | None, float, str]:
    """Threshold, cut-points and fellow-eye blending: --threshold, --operating-point, the pipeline's
    point when it belongs to this checkpoint, or a loudly announced fallback."""
    from dr_core.evaluation.predict import read_operating_point

    if args.threshold is not None:
        log.warning("referral: referable score >= %.4f as given by --threshold (not chosen on val); grades: "
                    "the most probable class", args.threshold)
        return args.threshold, None, 0.0, "referable"
    if args.operating_point is not None:
        return read_operating_point(args.operating_point, args.model_path)
    if DEFAULT_POINT.is_file():  # used unasked only when it names this very checkpoint by its digest
        try:
            if "model_sha256" not in json.loads(DEFAULT_POINT.read_text()):
                raise ValueError("it does not record which checkpoint it was chosen for")
            point = read_operating_point(DEFAULT_POINT, args.model_path)
        except (ValueError, OSError) as err:
            log.warning("not using %s: %s", DEFAULT_POINT, err)
        else:
            log.info("operating point: %s (chosen on val for this checkpoint)", DEFAULT_POINT)
            return point
    log.warning("NO OPERATING POINT for %s: referral falls back to referable score >= 0.5 and grades to the "
                "most probable class, neither chosen on val. Pass --operating-point results/operating_point.json "
                "(written by `dvc repro` with this checkpoint) or --threshold", args.model_path)
    return 0.5, None, 0.0, "referable"


def _refuse_inputs(args: argparse.Namespace, photos: list[Path]) -> None:
    """Stop before any work if an output would land on an input (:class:`OutputError` names both)."""
    from dr_core.runtime.outputs import refuse_input, refuse_inside

    inputs = [("checkpoint (--model-path)", args.model_path), *(("input photo", p) for p in photos)]
    if args.operating_point is not None:
        inputs.append(("operating point (--operating-point)", args.operating_point))
        beside = args.operating_point.with_name("operating_point.json")  # read instead of a metrics.json
        if beside.is_file():
            inputs.append(("operating point read beside --threshold-from", beside))
    refuse_input(args.output, inputs, "--output")
    if args.gradcam_dir is not None and args.input.is_dir():  # overlays would be graded as photos next time
        refuse_inside(args.gradcam_dir, args.input, "photo folder (--input)", "--gradcam-dir")


if __name__ == "__main__":
    sys.exit(main())
