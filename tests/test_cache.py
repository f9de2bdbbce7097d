"""The on-disk cache: aligned npy/csv, atomic writes, worker count independence, clear failures."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from dr_core.data.cache import CacheBuildError, build_cache
from dr_core.config import PreprocessConfig
from dr_core.data.dataset import load_cache
from dr_core.data.preprocess import preprocess_image, read_fundus
from dr_core.runtime.workers import resolve_workers

SIZE = 48
COUNTS = {"train": 6, "val": 3, "test": 2}


def write_dataset(root: Path) -> tuple[Path, Path]:
    """Synthetic discs (JPEG and PNG, several sizes) and split CSVs in the split stage's layout."""
    rng = np.random.default_rng(0)
    img_dir, split_dir = root / "images", root / "split"
    img_dir.mkdir()
    split_dir.mkdir()
    n = 0
    for split, count in COUNTS.items():
        rows = []
        for _ in range(count):
            h, w = int(rng.integers(60, 90)), int(rng.integers(90, 130))
            img = np.zeros((h, w, 3), np.uint8)
            colour = tuple(int(c) for c in rng.integers(60, 230, 3))
            cv2.circle(img, (w // 2, h // 2), int(min(h, w) * 0.45), colour, thickness=-1)
            name = f"{n}_left.{'jpeg' if n % 2 else 'png'}"
            cv2.imwrite(str(img_dir / name), img)
            rows.append({"id": f"{n}_left", "file": name, "grade": n % 5, "patient": str(n), "group": str(n)})
            n += 1
        pd.DataFrame(rows).to_csv(split_dir / f"{split}.csv", index=False)
    return split_dir, img_dir


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    return write_dataset(tmp_path)


def test_build_cache_writes_aligned_outputs(dataset, tmp_path):
    split_dir, img_dir = dataset
    out = tmp_path / "cache"
    cfg = PreprocessConfig(cache_size=SIZE, workers=1)
    info = build_cache(split_dir, img_dir, out, cfg)
    for split, count in COUNTS.items():
        images, meta = load_cache(out, split)
        assert images.shape == (count, SIZE, SIZE, 3) and images.dtype == np.uint8
        assert (out / f"{split}.csv").read_bytes() == (split_dir / f"{split}.csv").read_bytes()
        for i in (0, count - 1):  # row i of the npy is the image of row i of the csv
            expected = preprocess_image(read_fundus(img_dir / meta["file"][i], SIZE), cfg)
            assert np.array_equal(images[i], expected)
        assert info["splits"][split]["count"] == count
        assert info["splits"][split]["bytes"] == (out / f"{split}.npy").stat().st_size
    assert not list(out.glob("*.tmp"))
    saved = json.loads((out / "cache_info.json").read_text())
    assert saved["total"]["count"] == sum(COUNTS.values())
    assert saved["preprocess"]["cache_size"] == SIZE and saved["image_shape"] == [SIZE, SIZE, 3]
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] > SIZE


def test_build_cache_same_with_one_and_two_workers(dataset, tmp_path):
    split_dir, img_dir = dataset
    one, two = tmp_path / "one", tmp_path / "two"
    build_cache(split_dir, img_dir, one, PreprocessConfig(cache_size=SIZE, workers=1))
    info = build_cache(split_dir, img_dir, two, PreprocessConfig(cache_size=SIZE, workers=2))
    assert info["workers"] == 2
    for split in COUNTS:
        assert (one / f"{split}.npy").read_bytes() == (two / f"{split}.npy").read_bytes()


@pytest.mark.parametrize("workers", [1, 2])
def test_corrupt_image_fails_naming_the_file(dataset, tmp_path, workers):
    split_dir, img_dir = dataset
    val = pd.read_csv(split_dir / "val.csv")
    (img_dir / val["file"][1]).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "cache"
    with pytest.raises(CacheBuildError, match=val["file"][1]):
        build_cache(split_dir, img_dir, out, PreprocessConfig(cache_size=SIZE, workers=workers))
    assert not list(out.glob("*.tmp"))  # no half-written file left behind
    assert not (out / "val.npy").exists()


def test_missing_image_fails_before_any_work(dataset, tmp_path):
    split_dir, img_dir = dataset
    test = pd.read_csv(split_dir / "test.csv")
    (img_dir / test["file"][0]).unlink()
    with pytest.raises(FileNotFoundError, match=test["file"][0]):
        build_cache(split_dir, img_dir, tmp_path / "cache", PreprocessConfig(cache_size=SIZE, workers=1))
    assert not (tmp_path / "cache").exists()


def test_missing_split_csv_names_it(dataset, tmp_path):
    split_dir, img_dir = dataset
    (split_dir / "val.csv").unlink()
    with pytest.raises(FileNotFoundError, match="val.csv"):
        build_cache(split_dir, img_dir, tmp_path / "cache", PreprocessConfig(cache_size=SIZE))


def test_empty_split_gives_an_empty_array(dataset, tmp_path):
    split_dir, img_dir = dataset
    pd.read_csv(split_dir / "test.csv").iloc[:0].to_csv(split_dir / "test.csv", index=False)
    out = tmp_path / "cache"
    build_cache(split_dir, img_dir, out, PreprocessConfig(cache_size=SIZE, workers=1))
    images, meta = load_cache(out, "test")
    assert images.shape == (0, SIZE, SIZE, 3) and len(meta) == 0


def test_resolve_workers():
    assert resolve_workers(3, 10) == 3
    assert resolve_workers(8, 2) == 2  # never more processes than images
    assert resolve_workers(0, 1000) >= 1
    assert resolve_workers(4, 0) == 1
    with pytest.raises(ValueError, match="workers"):
        resolve_workers(-1, 10)


def test_stage_script_reads_each_photo_from_its_sources_folder(dataset, tmp_path):
    script = Path(__file__).resolve().parents[1] / "stages" / "preprocess.py"
    spec = importlib.util.spec_from_file_location("stage_preprocess", script)
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    split_dir, img_dir = dataset
    other = tmp_path / "other images"
    other.mkdir()
    for split in COUNTS:  # the JPEGs come from a second source, in a folder of its own
        table = pd.read_csv(split_dir / f"{split}.csv")
        table.insert(1, "source", np.where(table["file"].str.endswith(".jpeg"), "b", "a"))
        for name in table.loc[table["source"] == "b", "file"]:
            (img_dir / name).rename(other / name)
        table.to_csv(split_dir / f"{split}.csv", index=False)
    params = tmp_path / "params.yaml"
    params.write_text(f"preprocess:\n  cache_size: {SIZE}\n  workers: 1\ndata:\n  sources:\n"
                      f"    a: {{labels_csv: a.csv, img_dir: '{img_dir}'}}\n    b: {{labels_csv: b.csv, img_dir: '{other}'}}\n")
    stage.main(["--split-dir", str(split_dir), "--out", str(tmp_path / "c"), "--params", str(params)])
    images, meta = load_cache(tmp_path / "c", "train")
    assert images.shape == (COUNTS["train"], SIZE, SIZE, 3) and set(meta["source"]) == {"a", "b"}
    info = json.loads((tmp_path / "c" / "cache_info.json").read_text())
    assert info["img_dirs"] == {"a": str(img_dir), "b": str(other)}
    params.write_text(f"preprocess:\n  cache_size: {SIZE}\n  workers: 1\ndata:\n  sources:\n"
                      f"    a: {{labels_csv: a.csv, img_dir: '{img_dir}'}}\n")
    with pytest.raises(ValueError, match=r"train\.csv: photographs of source\(s\) \['b'\], which data\.sources "
                                         r"does not list"):
        stage.main(["--split-dir", str(split_dir), "--out", str(tmp_path / "c2"), "--params", str(params)])
