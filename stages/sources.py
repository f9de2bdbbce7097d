"""Stage `sources` (one per entry of ``data.sources``): validate one labelled source and fingerprint its photos.

``--source NAME`` picks the entry; its labels CSV and image folder are read from params.yaml here, never
from the command line. Writes ``photos.csv``, ``signatures.npy``, ``bad_images.csv`` and ``summary.json``
to ``--out`` (see dr_core.data.sources).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from stages import run
from dr_core.config import load_params
from dr_core.data.ingest import DataError
from dr_core.data.sources import ingest_source
from dr_core.runtime.logs import setup_logging

# = its params in dvc.yaml, verbatim, where ${key} is the source's name (tests/test_dvc_deps.py)
PARAMS = ("data.sources.${key}", "data.id_col", "data.label_col", "data.patient", "data.on_bad_image",
          "data.max_bad_fraction", "model.num_classes", "preprocess.workers")

logger = logging.getLogger("stages.sources")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", required=True, help="the name of the source in data.sources")
    parser.add_argument("--out", type=Path, required=True, help="folder to write (data/sources/<name>)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    args = parser.parse_args(argv)
    setup_logging()
    # Unknown keys and bad types still fail here; only the sections read are range-checked (data: also no two
    # sources alike), which spares the seconds and the memory of importing timm to check model.name.
    params = load_params(args.params, validate=False)
    params.data.validate()
    params.preprocess.validate()
    if args.source not in params.data.sources:
        print(f"error: data.sources has no source {args.source!r}: {sorted(params.data.sources)}", file=sys.stderr)
        return 2
    params = params.only([p.replace("${key}", args.source) for p in PARAMS], "sources")
    try:
        ingest_source(args.source, params.data.sources[args.source], params.data, params.model.num_classes,
                      args.out, params.preprocess.workers)
    except DataError as err:
        logger.error("source %r stopped: bad input data", args.source)
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run(main)
