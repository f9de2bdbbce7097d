import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, write_fake_cache
from dr_core.models.checkpoint import load_checkpoint, read_checkpoint, read_meta
from dr_core.config import params_from_dict
from dr_core.runtime.device import seed_everything
from dr_core.training.engine import StepContext, TrainingDiverged, run_epoch
from dr_core.training.fit import fit

TINY = {"model": {"name": "resnet10t", "pretrained": False, "drop_path_rate": 0.0},
        "train": {"image_size": 48, "epochs_stage1": 1, "epochs_stage2": 2, "batch_size": 16,
                  "num_workers": 0, "save_freq": 2, "warmup_epochs": 0.0}}


def tiny(model: dict | None = None, **train):
    raw = json.loads(json.dumps(TINY))
    raw["model"].update(model or {})
    raw["train"].update(train)
    return params_from_dict(raw)


def test_fit_writes_the_guides_outputs_and_dvclive_metrics(fake_cache, tmp_path):
    summary = fit(fake_cache, tmp_path / "models", tmp_path / "live", tiny())
    names = {p.name for p in (tmp_path / "models").iterdir()}
    assert {"best_model.pth", "best_stage1.pth", "checkpoint_epoch_2.pth", "last.pth",
            "training_history.json"} <= names
    history = json.loads((tmp_path / "models" / "training_history.json").read_text())
    assert [row["stage"] for row in history["history"]] == [1, 2, 2]
    metrics = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert {"loss", "acc", "qwk", "auc", "f1_macro"} <= set(metrics["val"]) and "lr" in metrics
    assert metrics["best"]["epoch"] == summary["best_epoch"]
    assert (tmp_path / "live" / "plots" / "metrics" / "val" / "qwk.tsv").read_text().count("\n") == 4
    model, meta = load_checkpoint(tmp_path / "models" / "best_model.pth")
    assert meta.image_size == 48 and meta.num_classes == 5 and "clahe_clip" in meta.to_dict()["preprocess"]
    assert len(meta.mean) == 3 and meta.class_names[0] == "No DR"


def test_stage1_leaves_backbone_and_batchnorm_untouched(fake_cache, tmp_path):
    params = tiny(epochs_stage2=0)
    from dr_core.models.backbone import build_model
    torch.manual_seed(params.seed)
    before = build_model(params.model).state_dict()
    fit(fake_cache, tmp_path / "m", tmp_path / "l", params)
    after = read_checkpoint(tmp_path / "m" / "last.pth")["model"]
    head = {"fc.weight", "fc.bias"}
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert set(changed) == head, f"stage 1 changed {set(changed) - head}"


def test_freeze_stride_keeps_early_layers_and_their_statistics(fake_cache, tmp_path):
    params = tiny(epochs_stage1=0, freeze_stride=4)
    from dr_core.models.backbone import build_model, early_parameter_names
    torch.manual_seed(params.seed)
    model = build_model(params.model)
    before = model.state_dict()
    early = set(early_parameter_names(model, 4))
    fit(fake_cache, tmp_path / "m", tmp_path / "l", params)
    after = read_checkpoint(tmp_path / "m" / "last.pth")["model"]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # resnet10t: stem convs + layer1 are before stride 4; their BatchNorm running stats stay too
    early_modules = {k.rsplit(".", 1)[0] for k in early}
    assert early and not {k for k in changed if k.rsplit(".", 1)[0] in early_modules}
    assert any(k.startswith("layer4.") for k in changed) and "fc.weight" in changed


def test_monitor_last_keeps_the_final_epoch(fake_cache, tmp_path):
    summary = fit(fake_cache, tmp_path / "m", tmp_path / "l", tiny(monitor="last", patience=1))
    assert summary["best_epoch"] == summary["epochs_run"] == 3  # no early stop, no selection
    assert read_meta(tmp_path / "m" / "best_model.pth").epoch == 3


def test_epoch_row_reports_referable_auc_per_split():
    import numpy as np

    from dr_core.training.engine import EpochResult
    from dr_core.training.fit import _epoch_row
    y = np.array([0, 1, 2, 3, 0, 4])
    onehot = np.eye(5)[y]  # grades ranked exactly: referable AUC 1
    wrong = np.eye(5)[np.where(y >= 2, 0, 4)]  # every referable photo scored below every other: AUC 0
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    row = _epoch_row(1, 2, EpochResult(0.0, y, onehot), EpochResult(0.0, y, wrong), opt, 5, referable_grade=2)
    assert row["train/auc"] == 1.0 and row["val/auc"] == 0.0
    mild = np.eye(5)[np.minimum(y, 1)]  # separates grade >= 1 only; for grade >= 2 every score ties
    row = _epoch_row(1, 2, EpochResult(0.0, y, mild), EpochResult(0.0, y, mild), opt, 5, referable_grade=1)
    assert row["val/auc"] == 1.0
    assert _epoch_row(1, 2, EpochResult(0.0, y, mild), EpochResult(0.0, y, mild), opt, 5)["val/auc"] == 0.5


def test_monitor_val_auc_keeps_the_best_auc_epoch(fake_cache, tmp_path):
    summary = fit(fake_cache, tmp_path / "m", tmp_path / "l", tiny(monitor="val/auc"))
    history = json.loads((tmp_path / "m" / "training_history.json").read_text())["history"]
    aucs = [row["val/auc"] for row in history]
    assert summary["monitor"] == "val/auc"
    assert summary["best_value"] == max(aucs) and summary["best_epoch"] == 1 + aucs.index(max(aucs))


def test_same_seed_same_metrics(fake_cache, tmp_path):
    params = tiny(num_workers=2)
    a = fit(fake_cache, tmp_path / "a", tmp_path / "la", params)
    b = fit(fake_cache, tmp_path / "b", tmp_path / "lb", params)
    ha = json.loads((tmp_path / "a" / "training_history.json").read_text())["history"]
    hb = json.loads((tmp_path / "b" / "training_history.json").read_text())["history"]
    assert ha == hb and a == b  # no timings in tracked outputs: identical runs write identical files


def test_deterministic_mode_skips_the_nan_fill_of_new_tensors():
    # the fill cost a third of the preset's CPU training time (bench/determinism.py); kernels stay deterministic
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.utils.deterministic.fill_uninitialized_memory)
    try:
        seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.utils.deterministic.fill_uninitialized_memory is False
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.utils.deterministic.fill_uninitialized_memory = before[2]


def test_nan_loss_names_epoch_batch_and_fixes(fake_cache):
    from dr_core.data.dataset import cached_dataset
    from dr_core.data.augment import build_transforms
    import timm
    model = timm.create_model("resnet10t", num_classes=5)
    torch.nn.init.constant_(model.fc.weight, float("nan"))
    ds, _ = cached_dataset(fake_cache, "train", build_transforms(32, (0.5,) * 3, (0.5,) * 3, "none"))
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    ctx = StepContext(device=torch.device("cpu"), lr_hint="train.lr_stage2")
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(TrainingDiverged, match=r"epoch 3\), batch 1-1/5: loss is nan.*train.lr_stage2.*mixed_precision"):
        run_epoch(model, loader, torch.nn.CrossEntropyLoss(), ctx, opt, "stage 2 epoch 3", 3)


def test_out_of_memory_names_batch_and_image_size(fake_cache):
    from dr_core.data.augment import build_transforms
    from dr_core.data.dataset import cached_dataset
    from dr_core.training.engine import OutOfMemory

    class Hungry(torch.nn.Module):
        def forward(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    ds, _ = cached_dataset(fake_cache, "val", build_transforms(32, (0.5,) * 3, (0.5,) * 3, "none"))
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    with pytest.raises(OutOfMemory, match=r"batch 1/3.*\(8, 3, 32, 32\).*train.batch_size.*train.image_size"):
        run_epoch(Hungry(), loader, torch.nn.CrossEntropyLoss(), StepContext(device=torch.device("cpu")))


def test_grad_accumulation_steps_optimizer_less_often(fake_cache, tmp_path):
    fit(fake_cache, tmp_path / "m", tmp_path / "l", tiny(grad_accum=2, epochs_stage1=0, epochs_stage2=1))
    state = read_checkpoint(tmp_path / "m" / "last.pth")["train_state"]
    assert state["scheduler"]["last_epoch"] == 1  # 2 batches of 16 from 40 images (drop_last), accumulated


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path):
    cache = write_fake_cache(tmp_path / "cache", {"train": 160, "val": 40, "test": 10})
    raw = json.loads(json.dumps(TINY))
    raw["train"].update(epochs_stage1=1, epochs_stage2=3)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))

    def run(out: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "stages.train", "--cache-dir", str(cache),
               "--save-dir", str(tmp_path / out), "--live-dir", str(tmp_path / f"live_{out}"),
               "--params", str(tmp_path / "params.yaml")]
        return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    assert run("full").wait(timeout=300) == 0
    proc = run("killed")
    last = tmp_path / "killed" / "last.pth"
    deadline = time.time() + 240
    while time.time() < deadline and not (last.exists() and read_checkpoint(last)["train_state"]["epoch"] >= 2):
        time.sleep(0.2)
    time.sleep(0.5)  # into epoch 3
    assert proc.poll() is None, "run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = run("killed")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resuming from" in err
    read = lambda d: json.loads((tmp_path / d / "training_history.json").read_text())["history"]
    assert read("killed") == read("full")
    full = json.loads((tmp_path / "live_full" / "metrics.json").read_text())
    killed = json.loads((tmp_path / "live_killed" / "metrics.json").read_text())
    assert killed == full


def test_training_never_reads_the_test_split(tmp_path, monkeypatch):
    cache = write_fake_cache(tmp_path / "cache", {"train": 40, "val": 20})  # no test files at all
    import dr_core.data.dataset as dataset
    seen = []
    real = dataset.load_cache
    monkeypatch.setattr(dataset, "load_cache", lambda d, split: seen.append(split) or real(d, split))
    fit(cache, tmp_path / "m", tmp_path / "l", tiny(epochs_stage2=1))
    assert sorted(set(seen)) == ["train", "val"]


def test_a_second_training_into_a_locked_save_dir_stops_before_any_work(fake_cache, tmp_path):
    from dr_core.runtime.lock import FolderLocked
    from test_runtime import hold_lock

    holder = hold_lock(tmp_path / "m")  # an orphaned trainer of a killed `dvc exp run`
    try:
        with pytest.raises(FolderLocked, match=f"process {holder.pid} holds"):
            fit(fake_cache, tmp_path / "m", tmp_path / "l", tiny())
        (tmp_path / "p.yaml").write_text(yaml.safe_dump(TINY))
        cmd = [sys.executable, "-m", "stages.train", "--cache-dir", str(fake_cache), "--save-dir", str(tmp_path / "m"),
               "--live-dir", str(tmp_path / "l"), "--params", str(tmp_path / "p.yaml")]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 3, out.stderr
        assert f"error: {tmp_path / 'm'}: another training is writing here (process {holder.pid}" in out.stderr
        assert "Traceback" not in out.stderr
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [".lock"]  # nothing written
    assert not (tmp_path / "l").exists()


def test_training_stops_when_params_yaml_changes_under_it(fake_cache, tmp_path, monkeypatch):
    import dr_core.training.fit as fit_module
    from dr_core.config import load_params
    from dr_core.config.drift import ParamsChangedError, check_params_unchanged
    from stages.train import PARAMS

    path = tmp_path / "params.yaml"
    raw = json.loads(json.dumps(TINY))
    path.write_text(yaml.safe_dump(raw))
    params = load_params(path).only(PARAMS, "train")
    real = fit_module.run_epoch

    def run_epoch(*args, **kwargs):
        if args[6] == 2:  # during epoch 2, another `dvc exp run -S` rewrites params.yaml
            path.write_text(yaml.safe_dump({**raw, "train": {**raw["train"], "loss": "ordinal"}}))
        return real(*args, **kwargs)

    monkeypatch.setattr(fit_module, "run_epoch", run_epoch)
    check = functools.partial(check_params_unchanged, path, PARAMS, "train", params.to_dict())
    with pytest.raises(ParamsChangedError, match=r"train.loss: '\w+' -> 'ordinal'"):
        fit(fake_cache, tmp_path / "m", tmp_path / "l", params, check)
    assert read_checkpoint(tmp_path / "m" / "last.pth")["train_state"]["epoch"] == 1  # epoch 2 wrote nothing
    assert not (tmp_path / "m" / "training_history.json").exists()


def test_train_sources_trains_and_validates_on_those_sources_only(tmp_path):
    """train.sources: the loaders hold that source's photos of the same cached split, nothing else."""
    import pandas as pd

    from dr_core.data.loaders import make_loaders

    cache = write_fake_cache(tmp_path / "cache", {"train": 40, "val": 20, "test": 20})
    for split in ("train", "val", "test"):
        table = pd.read_csv(cache / f"{split}.csv")
        table.insert(1, "source", ["odir" if i % 4 == 0 else "eyepacs" for i in range(len(table))])
        table.to_csv(cache / f"{split}.csv", index=False)
    odir = make_loaders(cache, tiny(sources=["odir"]), (0.5,) * 3, (0.25,) * 3, torch.device("cpu"))
    assert len(odir.train.dataset) == 10 and len(odir.val.dataset) == 5
    assert odir.train_grades.tolist() == pd.read_csv(cache / "train.csv")["grade"].to_numpy()[::4].tolist()
    both = make_loaders(cache, tiny(), (0.5,) * 3, (0.25,) * 3, torch.device("cpu"))
    assert len(both.train.dataset) == 40 and len(both.val.dataset) == 20
    image, grade = odir.train.dataset[1]  # the second odir photo is row 4 of the cache
    assert grade == int(pd.read_csv(cache / "train.csv")["grade"][4])
    with pytest.raises(ValueError, match=r"train.csv: no photographs of source\(s\) \['aptos'\]"):
        make_loaders(cache, tiny(sources=["aptos"]), (0.5,) * 3, (0.25,) * 3, torch.device("cpu"))


def test_train_sources_must_be_distinct_source_names():
    from dr_core.config import ConfigError

    with pytest.raises(ConfigError, match=r"train.sources: got \['odir', 'odir'\], expected each source once"):
        tiny(sources=["odir", "odir"])
    with pytest.raises(ConfigError, match=r"train.sources\[0\]: got 'a b'"):
        tiny(sources=["a b"])
    with pytest.raises(ConfigError, match="expected a list of names"):
        tiny(sources="odir")
