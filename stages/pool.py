"""Stage `pool` of cv/dvc.yaml: every fold's test predictions pooled into cross-validated metrics."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from stages import run
from dr_core.config import load_params
from dr_core.evaluation.crossval import cv_metrics, cv_table, pool_folds
from dr_core.runtime.io import write_atomic
from dr_core.runtime.logs import setup_logging

PARAMS = ("seed", "cv.folds", "model.num_classes", "evaluate.referable_grade", "evaluate.bootstrap")  # = cv/dvc.yaml


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=Path, required=True,
                        help="folder holding fold<k>/ (predictions.csv, metrics.json) for each k of cv.folds")
    parser.add_argument("--metrics", type=Path, required=True, help="pooled headline figures (DVC metric)")
    parser.add_argument("--table", type=Path, required=True, help="the same as markdown, with a line per fold")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    args = parser.parse_args(argv)
    setup_logging()
    params = load_params(args.params, validate=False).only(PARAMS, "pool")  # no timm import: nothing trains here
    params.cv.validate()
    figures = pool_folds([args.results / f"fold{k}" for k in params.cv.folds], params.model.num_classes,
                         params.evaluate.referable_grade, params.evaluate.bootstrap, params.seed)
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.metrics, lambda p: p.write_text(json.dumps(cv_metrics(figures), indent=2) + "\n"))
    write_atomic(args.table, lambda p: p.write_text(cv_table(figures)))
    return 0


if __name__ == "__main__":
    run(main)
