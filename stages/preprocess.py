"""Stage `preprocess`: crop, CLAHE and resize every split image into data/cache (see dr_core.data.cache).

Each photograph is read from its source's ``img_dir`` (``data.sources`` in params.yaml), never from the
command line.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from dr_core.data.cache import build_cache
from stages import run
from dr_core.config import load_params
from dr_core.runtime.logs import setup_logging

PARAMS = ("preprocess", "data.sources")  # = its params in dvc.yaml (tests/test_dvc_deps.py)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split-dir", type=Path, required=True, help="folder with {train,val,test}.csv")
    parser.add_argument("--out", type=Path, required=True, help="cache folder to write")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    args = parser.parse_args(argv)
    setup_logging()
    # Unknown keys and bad types still fail here; only this stage's sections are range-checked,
    # which spares the 6 s and 1 GB of importing timm to check model.name.
    params = load_params(args.params, validate=False).only(PARAMS, "preprocess")
    params.preprocess.validate()
    img_dirs = {name: Path(source.img_dir) for name, source in params.data.sources.items()}
    build_cache(args.split_dir, img_dirs, args.out, params.preprocess)


if __name__ == "__main__":
    run(main)
