"""Train stage: two-stage fine-tuning of a timm model on the cached train/val splits.

With ``train.nproc_per_node > 1`` it relaunches itself under
``torchrun --standalone --nproc_per_node=N`` (DDP; NCCL on GPUs, gloo on CPU).
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import subprocess
import sys
from pathlib import Path

from stages import run
from dr_core.config import load_params
from dr_core.config.drift import check_params_unchanged
from dr_core.training.fit import fit
from dr_core.runtime.logs import setup_logging

# = its params in dvc.yaml (tests/test_dvc_deps.py). preprocess: written into the checkpoint, so that
# evaluate and predict prepare raw photos as the cache did; evaluate.referable_grade: val AUC per epoch.
PARAMS = ("seed", "model", "train", "preprocess", "evaluate.referable_grade")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache-dir", type=Path, default=Path("data/cache"))
    parser.add_argument("--save-dir", type=Path, default=Path("models"))
    parser.add_argument("--live-dir", type=Path, default=Path("dvclive/train"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    setup_logging()
    params = load_params(args.params).only(PARAMS, "train")
    n = params.train.nproc_per_node
    if n > 1 and "LOCAL_RANK" not in os.environ:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "-m", "stages.train", *sys.argv[1:]]
        logging.getLogger("stages.train").info("launching: %s", " ".join(cmd))
        return subprocess.call(cmd)
    # stop rather than write outputs that params.yaml no longer describes (another `dvc exp run` here)
    check = functools.partial(check_params_unchanged, args.params, PARAMS, "train", params.to_dict())
    fit(args.cache_dir, args.save_dir, args.live_dir, params, check)
    return 0


if __name__ == "__main__":
    run(main)
