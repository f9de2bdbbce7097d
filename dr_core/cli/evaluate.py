"""``python -m dr_core.evaluate``: the reference guide's evaluation command line.

    python -m dr_core.evaluate --labels-csv CSV --img-dir DIR --model-path models/best_model.pth \\
        --output-dir results_external

It writes into a new or empty ``--output-dir``, or one that an earlier run of this command wrote (its
``.drgrade-outputs.json`` lists the files); a folder holding anything else needs ``--force``
(:func:`dr_core.runtime.outputs.claim_dir`). Inputs are never overwritten, and the output folder is
never the photo folder or inside it.

Heavy libraries (torch, timm) are imported after the arguments are parsed, so ``--help`` is quick.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from dr_core.config import DataConfig, EvaluateConfig, load_params
from dr_core.runtime.logs import setup_logging

log = logging.getLogger(__name__)


def _operating_point(args: argparse.Namespace, cfg: EvaluateConfig
                     ) -> tuple[float, list[float] | None, EvaluateConfig]:
    """Referable threshold and grade cut-points: ``--threshold`` (argmax grades) or the
    pipeline's operating point, both chosen on val; with the latter, ``cfg`` takes its fellow-eye
    blending, so that scores are made as the threshold's were."""
    if args.threshold is not None:
        return args.threshold, None, cfg
    path = args.operating_point
    if not path.exists():
        raise SystemExit(f"{path}: no operating point; run the pipeline's evaluate stage first "
                         "(`dvc repro evaluate`) or pass --threshold (referable-score cut-off, 0..1)")
    from dr_core.evaluation.eyes import fellow_eye_of
    from dr_core.evaluation.predict import check_point_matches

    point = json.loads(path.read_text())
    check_point_matches(point, path, args.model_path)  # a threshold chosen for another model means nothing
    if "fellow_eye_weight" in point:  # older operating points: params.yaml's blending
        weight, scope = fellow_eye_of(point, path)
        chosen = dataclasses.replace(cfg, fellow_eye_weight=weight, fellow_eye_scope=scope)
        if chosen != cfg:
            log.info("fellow-eye blending as when %s was chosen: weight %.2f, scope %s", path, weight, scope)
        cfg = chosen
    return float(point["threshold"]), point.get("grade_cutpoints"), cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dr_core.evaluate",
                                     description="Evaluate a drgrade checkpoint on a labelled folder "
                                                 "(APTOS or EyePACS layout).")
    parser.add_argument("--labels-csv", type=Path, required=True,
                        help="labels of the photos (id_code,diagnosis or image,level)")
    parser.add_argument("--img-dir", type=Path, required=True, help="folder of the photos")
    parser.add_argument("--model-path", type=Path, default=Path("models/best_model.pth"),
                        help="checkpoint (default: models/best_model.pth)")
    parser.add_argument("--output-dir", type=Path, default=Path("results_external"),
                        help="folder for metrics.json, predictions.csv and the figures: new, empty, or "
                             "written by an earlier run of this command (its .drgrade-outputs.json lists the "
                             "files); never the --img-dir folder or inside it")
    parser.add_argument("--force", action="store_true",
                        help="write into an --output-dir that holds other files too, replacing those of the "
                             "same names (metrics.json, predictions.csv, ...); inputs are never overwritten")
    parser.add_argument("--threshold", type=float, default=None,
                        help="referable-DR score cut-off; default: from --operating-point")
    parser.add_argument("--operating-point", type=Path, default=Path("results/operating_point.json"),
                        help="the threshold and grade cut-points chosen on val by the pipeline")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="evaluate/data settings (bootstrap, TTA, column names); defaults if absent. "
                             "Fellow-eye blending follows the operating point when it records one")
    parser.add_argument("--tta", action="store_true", help="average the 8 dihedral views")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where to run the model; auto: CUDA when available")
    args = parser.parse_args(argv)
    setup_logging()
    if args.params.exists():
        params = load_params(args.params)
        cfg, data, seed = params.evaluate, params.data, params.seed
    else:
        cfg, data, seed = EvaluateConfig(), DataConfig(), 0
    if args.tta:
        cfg = dataclasses.replace(cfg, tta=True)
    from dr_core.data.ingest import DataError
    from dr_core.evaluation.evaluate import evaluate_folder, folder_output
    from dr_core.evaluation.predictions import Decision
    from dr_core.models.checkpoint import CheckpointError
    from dr_core.runtime.device import pick_device
    from dr_core.runtime.outputs import claim_dir, refuse_inside

    inputs = [("labels CSV (--labels-csv)", args.labels_csv), ("checkpoint (--model-path)", args.model_path),
              ("settings file (--params)", args.params)]
    if args.threshold is None:
        inputs.append(("operating point (--operating-point)", args.operating_point))
    try:
        refuse_inside(args.output_dir, args.img_dir, "photo folder (--img-dir)", "--output-dir")
        threshold, cutpoints, cfg = _operating_point(args, cfg)
        with claim_dir(args.output_dir, "python -m dr_core.evaluate", args.force, folder_output, inputs):
            metrics = evaluate_folder(args.labels_csv, args.img_dir, args.model_path, args.output_dir, cfg,
                                      Decision(threshold, cutpoints), data, str(pick_device(args.device)), seed)
    except (DataError, CheckpointError, OSError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    log.info("wrote %s (QWK %.4f)", args.output_dir, metrics["qwk"] if metrics["qwk"] is not None else float("nan"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
