"""Shared fixtures: tiny generated fundus-like images and a matching preprocessed cache."""
from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def committed_text(rel: str, root: Path = REPO) -> str:
    """A file as committed at HEAD, not as the workspace has it.

    Tests must pass whatever the user ran: ``dvc exp run -S ...`` in the workspace leaves its settings
    in the workspace's params.yaml. Outside a git checkout (an unpacked archive) the file itself is read.
    """
    out = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=root, capture_output=True, text=True)
    return out.stdout if out.returncode == 0 else (root / rel).read_text()


def fake_fundus(grade: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A bright disc on black with ``3 * grade`` dark-red dots: learnable, tiny, fast."""
    img = np.zeros((size, size, 3), np.uint8)
    c = size // 2
    cv2.circle(img, (c, c), int(size * 0.45), (200, 90, 40), -1)
    for _ in range(3 * grade):
        x, y = rng.integers(int(size * 0.25), int(size * 0.75), 2)
        cv2.circle(img, (int(x), int(y)), max(1, size // 24), (60, 10, 10), -1)
    return img


def write_fake_cache(cache_dir: Path, n: dict[str, int], size: int = 64, seed: int = 0,
                     num_classes: int = 5) -> Path:
    """Write ``{split}.npy`` / ``{split}.csv`` in the preprocess stage's format."""
    rng = np.random.default_rng(seed)
    cache_dir.mkdir(parents=True, exist_ok=True)
    pid = 0
    for split, count in n.items():
        grades = np.arange(count) % num_classes
        images = np.stack([fake_fundus(int(g), rng, size) for g in grades])
        np.save(cache_dir / f"{split}.npy", images)
        ids = [f"{split}_{i}" for i in range(count)]
        patients = [f"p{pid + i}" for i in range(count)]
        pid += count
        pd.DataFrame({"id": ids, "file": [f"{i}.png" for i in ids], "grade": grades,
                      "patient": patients, "group": patients}).to_csv(cache_dir / f"{split}.csv", index=False)
    return cache_dir


@pytest.fixture
def fake_cache(tmp_path: Path) -> Path:
    return write_fake_cache(tmp_path / "cache", {"train": 40, "val": 20, "test": 20})


@pytest.fixture(scope="session")
def cv_project(tmp_path_factory) -> Path:
    """A copy of the project on the tiny demo settings of the end-to-end tests whose two-fold
    cross-validation has run (`dvc repro cv/dvc.yaml`) and been committed. The copy drops the
    root dvc.lock: it names outputs that are in no cache of the copy's."""
    from test_pipeline_e2e import TINY, _run, make_project_copy

    dest = make_project_copy(tmp_path_factory.mktemp("cvproj"), {**TINY, "cv": {"folds": [0, 1]}})
    _run(["git", "rm", "-q", "dvc.lock"], dest)
    _run(["dvc", "repro", "cv/dvc.yaml"], dest)
    _run(["git", "add", "-A"], dest)
    _run(["git", "commit", "-qm", "cross-validation"], dest)
    return dest


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level(logging.INFO)
    yield
