"""Stage `demo`: write the synthetic demo dataset (APTOS layout plus a patient column)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from stages import run
from dr_core.config import GRADE_NAMES, load_params
from dr_core.synthetic.demo import make_demo_dataset
from dr_core.runtime.logs import setup_logging

PARAMS = ("seed", "demo")  # = its params in dvc.yaml (tests/test_dvc_deps.py)

logger = logging.getLogger("stages.demo")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder for train.csv and train_images/")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes (0: all cores); the images do not depend on it")
    args = parser.parse_args(argv)
    setup_logging()
    params = load_params(args.params).only(PARAMS, "demo")
    table = make_demo_dataset(args.out, params.demo.n_patients, params.demo.image_size, params.seed,
                              workers=args.workers)
    counts = table["diagnosis"].value_counts().reindex(range(len(GRADE_NAMES)), fill_value=0)
    logger.info("grade counts: %s", ", ".join(f"{g} {name}: {counts[g]}" for g, name in enumerate(GRADE_NAMES)))
    return 0


if __name__ == "__main__":
    run(main)
