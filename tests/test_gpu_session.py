"""bench/gpu_session.sh, the prepared GPU measurement, run here in SMOKE mode (CPU, tiny model) on two
generated sources: the flow from photos to throughput.json works before a GPU is ever at hand."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dr_core.synthetic.demo import make_demo_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_session_script_measures_the_train_stage_against_the_model_only_loop(tmp_path):
    data = tmp_path / "gpudata"
    for seed, name in enumerate(("eyepacs", "odir")):
        make_demo_dataset(data / name, n_patients=100, image_size=48, seed=seed, workers=1)
        (data / name / "train.csv").rename(data / name / "labels.csv")
        (data / name / "train_images").rename(data / name / "images")
    env = {**os.environ, "SMOKE": "1", "GPUDATA": str(data), "WORK": str(tmp_path / "work"),
           "OUT": str(tmp_path / "out"), "PY": sys.executable, "EPOCHS": "1", "STEPS": "2"}
    done = subprocess.run(["bash", "bench/gpu_session.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "throughput.json").read_text())
    assert result["train_stage_images_per_s"] > 0 and result["model_only_images_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["train_stage_images_per_s"] / result["model_only_images_per_s"],
                                            abs=1e-3)
    assert result["model"] == "resnet10t" and result["target_ratio"] == 0.8
    workers = result["augment_on_workers"]  # the comparison run: albumentations in the loader workers
    assert workers["train_stage_images_per_s"] > 0 and workers["ratio"] > 0
    assert "augment_on: device" in (tmp_path / "work" / "params.yaml").read_text()
    assert "augment_on: workers" in (tmp_path / "work" / "params_workers.yaml").read_text()
    assert (tmp_path / "work" / "cache" / "train.npy").exists()  # the stages wrote into WORK, not the repository
    assert "epoch 1:" in (tmp_path / "out" / "train.log").read_text()
