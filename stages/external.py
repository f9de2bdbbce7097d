"""Stage `external` (one per entry of ``evaluate.external``): the trained model on a held-out labelled folder.

``--name NAME`` picks the entry; its labels CSV and image folder come from params.yaml. The photographs get
the checkpoint's own preprocessing, and the threshold, grade cut-points and fellow-eye blending chosen on
val (``--operating-point``); nothing is tuned on them. A folder sharing a photograph with the split
(``--split-dir``: the same content, or the same file) is refused.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from stages import run
from dr_core.config import EvaluateConfig, load_params
from dr_core.data.ingest import DataError
from dr_core.data.sources import training_photos
from dr_core.evaluation.evaluate import evaluate_folder
from dr_core.evaluation.eyes import fellow_eye_of
from dr_core.evaluation.predictions import Decision
from dr_core.runtime.logs import setup_logging

# = its params in dvc.yaml, verbatim, where ${key} is the set's name (tests/test_dvc_deps.py)
PARAMS = ("seed", "evaluate.external.${key}", "evaluate.referable_grade", "evaluate.bootstrap", "evaluate.tta",
          "evaluate.batch_size", "data.sources", "data.id_col", "data.label_col", "data.patient",
          "data.on_bad_image", "data.max_bad_fraction")

logger = logging.getLogger("stages.external")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True, help="the name of the set in evaluate.external")
    parser.add_argument("--model-path", type=Path, default=Path("models/best_model.pth"))
    parser.add_argument("--operating-point", type=Path, default=Path("results/operating_point.json"))
    parser.add_argument("--split-dir", type=Path, default=Path("data/split"), help="the photographs trained on")
    parser.add_argument("--out", type=Path, required=True, help="folder to write (results/external/<name>)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    setup_logging()
    params = load_params(args.params)
    if args.name not in params.evaluate.external:
        print(f"error: evaluate.external has no set {args.name!r}: {sorted(params.evaluate.external)}",
              file=sys.stderr)
        return 2
    params = params.only([p.replace("${key}", args.name) for p in PARAMS], "external")
    folder, ev = params.evaluate.external[args.name], params.evaluate
    point = json.loads(args.operating_point.read_text())
    weight, scope = fellow_eye_of(point, args.operating_point)
    cfg = EvaluateConfig(referable_grade=ev.referable_grade, bootstrap=ev.bootstrap, tta=ev.tta,
                         batch_size=ev.batch_size, fellow_eye_weight=weight, fellow_eye_scope=scope)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        training = training_photos(args.split_dir, params.data.sources)
        evaluate_folder(Path(folder.labels_csv), Path(folder.img_dir), args.model_path, args.out, cfg,
                        Decision.from_operating_point(point), folder.resolved(params.data), device, params.seed,
                        training)
    except DataError as err:
        logger.error("external set %r stopped: bad input data", args.name)
        print(f"error: external set {args.name!r}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run(main)
