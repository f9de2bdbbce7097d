"""Stage `split`: validate labels and photographs, find duplicates, split by patient."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from dr_core.config import fold_params, load_params
from dr_core.data.ingest import DataError
from dr_core.data.split import run_split, write_atomic

logger = logging.getLogger("stages.split")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--labels-csv", type=Path, help="labels CSV (APTOS or EyePACS layout); default data.labels_csv")
    parser.add_argument("--img-dir", type=Path, help="folder of the photographs; default data.img_dir")
    parser.add_argument("--out", type=Path, required=True, help="folder for {train,val,test}.csv and reports")
    parser.add_argument("--metrics", type=Path, default=None,
                        help="also write summary.json here (DVC metric)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument("--fold", type=int,
                        help="a fold of cv/dvc.yaml: split.folds = len(cv.folds), split.fold = this")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    params = load_params(args.params)
    if args.fold is not None:
        params = fold_params(params, args.fold)
    labels_csv, img_dir = args.labels_csv or Path(params.data.labels_csv), args.img_dir or Path(params.data.img_dir)
    try:
        summary = run_split(labels_csv, img_dir, args.out, params.data, params.split,
                            params.model.num_classes, params.seed, params.preprocess.workers)
    except DataError as err:
        logger.error("split stopped: bad input data")
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.metrics is not None:
        args.metrics.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.metrics, lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
