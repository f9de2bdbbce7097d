"""Stage `export`: the trained model as ONNX (checked against PyTorch on the test photos) and its model card."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stages import run
from dr_core.config import load_params
from dr_core.export.handover import ExportError, HandoverPaths, hand_over
from dr_core.models.checkpoint import CheckpointError
from dr_core.runtime.logs import setup_logging

PARAMS = ("export",)  # = its params in dvc.yaml (tests/test_dvc_deps.py)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-path", type=Path, required=True, help="checkpoint to export")
    parser.add_argument("--operating-point", type=Path, required=True, help="operating_point.json (chosen on val)")
    parser.add_argument("--metrics", type=Path, required=True, help="the evaluate stage's metrics.json")
    parser.add_argument("--split-summary", type=Path, required=True, help="the split stage's summary (metrics/split.json)")
    parser.add_argument("--cache-dir", type=Path, required=True, help="cached photos; the test split checks the export")
    parser.add_argument("--onnx", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--check", type=Path, required=True, help="JSON with the ONNX-against-PyTorch differences")
    parser.add_argument("--card", type=Path, required=True, help="model card (Markdown) to write")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    args = parser.parse_args(argv)
    setup_logging()
    params = load_params(args.params, validate=False).only(PARAMS, "export")
    params.export.validate()
    paths = HandoverPaths(args.model_path, args.operating_point, args.metrics, args.split_summary, args.cache_dir,
                          args.onnx, args.check, args.card)
    try:
        hand_over(paths, params.export)
    except (ExportError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run(main)
