"""Evaluate stage: the best checkpoint on the held-out test split, overall and per source (threshold and grade
cut-points chosen on the pooled val split)."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from stages import run
from dr_core.config import load_params
from dr_core.evaluation.evaluate import evaluate_cached
from dr_core.runtime.logs import setup_logging

# = its params in dvc.yaml (tests/test_dvc_deps.py): every evaluate setting but `external`, so that adding an
# external set runs only the external stage
PARAMS = ("seed", "evaluate.referable_grade", "evaluate.operating_point", "evaluate.target_sensitivity",
          "evaluate.bootstrap", "evaluate.tta", "evaluate.batch_size", "evaluate.grade_rule",
          "evaluate.fellow_eye_weight", "evaluate.fellow_eye_scope")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-path", type=Path, default=Path("models/best_model.pth"))
    parser.add_argument("--cache-dir", type=Path, default=Path("data/cache"))
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    setup_logging()
    params = load_params(args.params).only(PARAMS, "evaluate")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    evaluate_cached(args.model_path, args.cache_dir, args.out, params.evaluate, params.seed, device)
    return 0


if __name__ == "__main__":
    run(main)
