"""Stage `preprocess`: crop, CLAHE and resize every split image into data/cache (see dr_core.data.cache)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from dr_core.data.cache import build_cache
from dr_core.config import load_params


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split-dir", type=Path, required=True, help="folder with {train,val,test}.csv")
    parser.add_argument("--img-dir", type=Path, help="folder of the original photographs; default data.img_dir")
    parser.add_argument("--out", type=Path, required=True, help="cache folder to write")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Unknown keys and bad types still fail here; only this stage's section is range-checked,
    # which spares the 6 s and 1 GB of importing timm to check model.name.
    params = load_params(args.params, validate=False)
    cfg = params.preprocess
    cfg.validate()
    build_cache(args.split_dir, args.img_dir or Path(params.data.img_dir), args.out, cfg)


if __name__ == "__main__":
    main()
