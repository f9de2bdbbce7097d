"""DDP: disjoint shards, gathered metrics equal single-process ones, checkpoint usable (gloo, CPU)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import REPO, write_fake_cache
from dr_core.data.augment import build_transforms
from dr_core.models.checkpoint import load_checkpoint
from dr_core.config import params_from_dict
from dr_core.data.loaders import make_loaders
from dr_core.runtime.distributed import DistInfo, ShardSampler
from dr_core.evaluation.inference import predict_probs
from dr_core.data.dataset import load_cache
from dr_core.evaluation.metrics import accuracy, quadratic_weighted_kappa

TINY = {"model": {"name": "resnet10t", "pretrained": False, "drop_path_rate": 0.0},
        "train": {"image_size": 48, "epochs_stage1": 1, "epochs_stage2": 1, "batch_size": 8,
                  "num_workers": 0, "save_freq": 0, "nproc_per_node": 2}}


def test_ranks_get_disjoint_shards(fake_cache):
    import torch
    params = params_from_dict(TINY)
    shards = {}
    for rank in (0, 1):
        loaders = make_loaders(fake_cache, params, (0.5,) * 3, (0.5,) * 3, torch.device("cpu"), DistInfo(rank, 2, rank))
        loaders.reseed(params.seed, 3)
        shards[rank] = (list(loaders.train.sampler), list(loaders.val.sampler))
    assert not set(shards[0][0]) & set(shards[1][0])
    assert sorted(shards[0][1] + shards[1][1]) == list(range(20))  # val covered exactly once


def test_shard_sampler_does_not_pad():
    assert list(ShardSampler(5, 1, 2)) == [1, 3] and list(ShardSampler(5, 0, 2)) == [0, 2, 4]


@pytest.mark.slow
def test_two_process_gloo_training_matches_single_process_evaluation(tmp_path):
    cache = write_fake_cache(tmp_path / "cache", {"train": 48, "val": 21, "test": 10})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    out = subprocess.run([sys.executable, "-m", "stages.train", "--cache-dir", str(cache), "--save-dir",
                          str(tmp_path / "models"), "--live-dir", str(tmp_path / "live"), "--params",
                          str(tmp_path / "params.yaml")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "torch.distributed.run" in out.stderr and "gloo process group" in out.stderr
    live_params = yaml.safe_load((tmp_path / "live" / "params.yaml").read_text())
    assert live_params["world_size"] == 2 and live_params["effective_batch_size"] == 16
    last = json.loads((tmp_path / "models" / "training_history.json").read_text())["history"][-1]
    model, meta = load_checkpoint(tmp_path / "models" / "last.pth")
    images, rows = load_cache(cache, "val")
    probs = predict_probs(model, np.asarray(images), meta, batch_size=64)
    y = rows["grade"].to_numpy()
    assert last["val/acc"] == pytest.approx(accuracy(y, probs.argmax(1)))
    assert last["val/qwk"] == pytest.approx(quadratic_weighted_kappa(y, probs.argmax(1), 5))
    best, _ = load_checkpoint(tmp_path / "models" / "best_model.pth")
    assert predict_probs(best, np.asarray(images)[:4], meta).shape == (4, 5)
