"""Stage `split`: merge the validated sources, find duplicates across them, split by patient.

The sources are those ``data.sources`` lists in params.yaml, read back from ``--sources`` (the folders the
``sources`` stage writes); folders of sources no longer listed are ignored.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from stages import run
from dr_core.config import fold_params, load_params
from dr_core.data.ingest import DataError
from dr_core.data.split import run_split
from dr_core.runtime.io import write_atomic
from dr_core.runtime.logs import setup_logging

PARAMS = ("seed", "data", "split", "model.num_classes")  # = dvc.yaml (tests/test_dvc_deps.py)
FOLD_PARAMS = PARAMS + ("cv.folds",)  # with --fold, as in cv/dvc.yaml

logger = logging.getLogger("stages.split")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sources", type=Path, default=Path("data/sources"),
                        help="the sources stage's folders, one per source")
    parser.add_argument("--out", type=Path, required=True, help="folder for {train,val,test}.csv and reports")
    parser.add_argument("--metrics", type=Path, default=None,
                        help="also write summary.json here (DVC metric)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument("--fold", type=int,
                        help="a fold of cv/dvc.yaml: split.folds = len(cv.folds), split.fold = this")
    args = parser.parse_args(argv)
    setup_logging()
    params = load_params(args.params)
    declared = PARAMS
    if args.fold is not None:  # a fold of cv/dvc.yaml: split.folds and split.fold come from cv.folds
        params, declared = fold_params(params, args.fold), FOLD_PARAMS
    params = params.only(declared, "split")
    try:
        summary = run_split(args.sources, args.out, params.data, params.split, params.model.num_classes, params.seed)
    except DataError as err:
        logger.error("split stopped: bad input data")
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.metrics is not None:
        args.metrics.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.metrics, lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"))
    return 0


if __name__ == "__main__":
    run(main)
