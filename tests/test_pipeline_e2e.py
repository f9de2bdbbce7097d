"""End to end: the real `dvc` commands on a copy of the project in a temporary git repository."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, committed_text
from dr_core.runtime.io import file_sha256

pytestmark = pytest.mark.slow

TINY = {
    "demo": {"n_patients": 60, "image_size": 96},
    "preprocess": {"cache_size": 64, "workers": 2},
    "model": {"name": "resnet10t", "pretrained": False, "pretrained_file": ""},
    "train": {"image_size": 48, "epochs_stage1": 1, "epochs_stage2": 1, "batch_size": 16, "num_workers": 0},
    "evaluate": {"bootstrap": 50},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def _run(args: list[str], cwd: Path, stdout_only: bool = False) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{' '.join(args)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out.stdout if stdout_only else out.stdout + out.stderr


def make_project_copy(dest: Path, overrides: dict) -> Path:
    """Copy the project's code (tracked and new, non-ignored files, but no pipeline outputs) into a fresh
    git repo, with the committed params.yaml: whatever experiment the workspace ran last does not leak in."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        src = REPO / rel
        outputs = rel.startswith(("data/", "models/", "results/", "dvclive/", "metrics/", "cv/"))
        if src.is_file() and (not outputs or rel == "cv/dvc.yaml"):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    params = yaml.safe_load(committed_text("params.yaml"))
    (dest / "params.yaml").write_text(yaml.safe_dump(_merge(params, overrides), sort_keys=False))
    _run(["git", "init", "-q", "-b", "main"], dest)
    _run(["git", "add", "-A"], dest)
    _run(["git", "commit", "-qm", "copy"], dest)
    return dest


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    dest = make_project_copy(tmp_path_factory.mktemp("proj"), TINY)
    _run(["dvc", "repro"], dest)
    _run(["git", "add", "-A"], dest)
    _run(["git", "commit", "-qm", "baseline"], dest)
    return dest


def test_repro_writes_every_output(project):
    for rel in ["data/split/train.csv", "data/cache/test.npy", "data/cache/contact_sheet.png",
                "models/best_model.pth", "models/best_stage1.pth", "models/training_history.json",
                "dvclive/train/metrics.json", "results/metrics.json", "results/classification_report.txt",
                "results/confusion_matrix.png", "results/roc_curves.png", "results/predictions.csv"]:
        assert (project / rel).exists(), rel
    metrics = json.loads((project / "results/metrics.json").read_text())
    assert {"qwk", "accuracy", "f1_macro", "referable_auc"} <= set(metrics["test"])
    status = _run(["dvc", "status", "dvc.yaml"], project)  # cv/dvc.yaml has not run here
    assert "up to date" in status


def test_a_forced_rerun_changes_nothing(project):
    """No timing or other run-dependent value lands in a tracked output: `dvc repro -f` on the same
    machine rewrites every output byte for byte, so dvc.lock, git status and dvc metrics diff stay clean."""
    _run(["dvc", "repro", "-f"], project)
    assert _run(["git", "status", "--porcelain"], project, stdout_only=True) == ""
    assert json.loads(_run(["dvc", "metrics", "diff", "--json"], project, stdout_only=True) or "{}") == {}


def test_export_writes_a_checked_onnx_model_and_a_model_card(project):
    check = json.loads((project / "export" / "check.json").read_text())
    assert check["n_images"] > 0 and check["max_abs_diff"] <= 1e-4
    card = (project / "results" / "MODEL_CARD.md").read_text()
    assert "Not a medical device" in card and "## Operating point" in card
    listed = _run(["dvc", "ls", "--dvc-only", "-R", ".", "export"], project, stdout_only=True)
    assert "model.onnx" in listed


def test_experiment_reruns_only_train_and_evaluate(project):
    out = _run(["dvc", "exp", "run", "-S", "train.loss=focal"], project)
    for stage in ("demo", "split", "preprocess"):
        assert f"Stage '{stage}' didn't change, skipping" in out, out[-3000:]
    assert "Running stage 'train'" in out and "Running stage 'evaluate'" in out
    text = json.dumps(json.loads(_run(["dvc", "exp", "show", "--json"], project, stdout_only=True)))
    assert "focal" in text and "test" in text and "qwk" in text
    diff = json.loads(_run(["dvc", "metrics", "diff", "--json"], project, stdout_only=True))
    assert "test.qwk" in diff["results/headline.json"]
    assert set(diff) == {"results/headline.json"}  # split counts, dvclive and per-class figures are no metrics


def test_plots_render_to_html(project):
    _run(["dvc", "plots", "show", "-o", "plots_html"], project)
    html = (project / "plots_html" / "index.html").read_text()
    for needle in ("Confusion matrix", "Referable DR ROC", "Training curves"):
        assert needle in html, needle


def run_queue(project: Path, jobs: int, timeout_s: int = 600) -> str:
    """Start the queued experiments with ``jobs`` workers and wait for them; returns `dvc queue status`."""
    import time

    _run(["dvc", "queue", "start", "-j", str(jobs)], project)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = _run(["dvc", "queue", "status"], project, stdout_only=True)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    assert "Failed" not in status, status + _run(["dvc", "queue", "logs", status.split()[-1]], project)
    return status


def test_queued_experiments_run_in_parallel_and_reuse_the_cache(project):
    _run(["dvc", "exp", "run", "--queue", "-S", "train.loss=ce,weighted_ce"], project)
    run_queue(project, jobs=2)
    _run(["dvc", "queue", "stop", "--kill"], project)
    rows = json.loads(_run(["dvc", "exp", "show", "--json"], project, stdout_only=True))
    exps = [e for row in rows for e in (row.get("experiments") or [])]
    losses = set()
    for exp in exps:
        for rev in exp.get("revs", []):
            data = rev.get("data") or {}
            params = data.get("params", {}).get("params.yaml", {}).get("data", {})
            metrics = data.get("metrics", {}).get("results/headline.json", {}).get("data", {})
            if "test" in metrics:
                losses.add(params["train"]["loss"])
    assert {"ce", "weighted_ce"} <= losses


def test_an_external_set_is_one_more_stage_scored_at_the_val_operating_point(project):
    """Declaring evaluate.external.<name> runs only its stage; its metrics are a DVC metric of their own."""
    _run([sys.executable, "-c", "from pathlib import Path; from dr_core.synthetic.demo import make_demo_dataset; "
          "make_demo_dataset(Path('heldout'), 10, 96, seed=7, workers=1)"], project)  # other photos than the demo's
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["evaluate"]["external"] = {"heldout": {"labels_csv": "heldout/train.csv", "img_dir": "heldout/train_images"}}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(["dvc", "repro"], project)
    assert "Running stage 'external@heldout'" in out, out[-3000:]
    for stage in ("sources@demo", "split", "preprocess", "train", "evaluate"):
        assert f"Stage '{stage}' didn't change, skipping" in out, (stage, out[-3000:])
    metrics = json.loads((project / "results/external/heldout/metrics.json").read_text())["external"]
    point = json.loads((project / "results/operating_point.json").read_text())
    assert metrics["n_images"] == 20 and metrics["referable_threshold"] == point["threshold"]
    shown = json.loads(_run(["dvc", "metrics", "show", "--json"], project, stdout_only=True))
    files = {path: data for rev in shown.values() for path, data in rev["data"].items()}
    assert files["results/external/heldout/headline.json"]["data"]["external"]["qwk"] == metrics["qwk"]
    assert "test" in files["results/headline.json"]["data"] and "demo" in files["results/headline.json"]["data"]["test"]
    assert "results/metrics.json" not in files  # counts and intervals stay out of DVC's metrics
    assert "up to date" in _run(["dvc", "status", "dvc.yaml"], project)


def test_ablation_script_queues_runs_and_tabulates(tmp_path):
    """research.ablation end to end on a tiny preset: 2 variants of 1 seed, each a queued two-fold
    cross-validation (cv/dvc.yaml) that tests every photo once and pools the folds."""
    dest = make_project_copy(tmp_path, {})
    _run(["git", "rm", "-q", "dvc.lock"], dest)  # it names outputs that are in no cache of the copy's
    preset = {k: v for k, v in TINY.items()}
    preset["train"] = {**TINY["train"], "loss": "regression"}
    preset["evaluate"] = {"grade_rule": "qwk"}
    (dest / "presets" / "tiny.yaml").write_text(yaml.safe_dump(preset))
    _run(["git", "add", "-A"], dest)
    _run(["git", "commit", "-qm", "tiny preset"], dest)
    out = _run([sys.executable, "-m", "research.ablation", "all", "--preset", "presets/tiny.yaml", "--seeds", "7",
                "--folds", "2", "--variants", "preset", "ordinal", "-j", "2", "--deadline-s", "900",
                "--out", "table.md"], dest)
    table = (dest / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| preset ") or line.startswith("| ordinal ")]
    assert len(rows) == 2, out[-3000:]
    assert all("| 1 (2-fold, pooled) |" in row for row in rows), table  # one cross-validation each, with metrics
    shown = json.loads(_run(["dvc", "exp", "show", "--all-commits", "--json"], dest, stdout_only=True))
    revs = {rev.get("name"): rev for row in shown for e in (row.get("experiments") or []) for rev in e["revs"]}
    names = [f"abl-{v}-s7-cv2" for v in ("preset", "ordinal")]
    assert set(names) <= set(revs), sorted(map(str, revs))
    for name in names:
        pooled = revs[name]["data"]["metrics"]["cv/metrics.json"]["data"]
        # pooling refuses a photo tested twice: all of them, once each, is a partition
        assert pooled["n_images"] == 2 * TINY["demo"]["n_patients"]
        assert revs[name]["data"]["params"]["params.yaml"]["data"]["cv"]["folds"] == [0, 1]


def test_make_real_cpu_is_a_named_experiment_that_leaves_the_workspace_alone(tmp_path):
    """`make real-cpu` with a tiny preset: params.yaml and the workspace's outputs stay as they were, the
    experiment is named real-cpu, and its model and results are copied to runs/real-cpu/."""
    dest = make_project_copy(tmp_path / "proj", TINY)
    (dest / "presets" / "tiny.yaml").write_text(yaml.safe_dump({"train": {"loss": "focal"}}))
    _run(["git", "add", "-A"], dest)
    _run(["git", "commit", "-qm", "tiny preset"], dest)
    data = tmp_path / "real"  # stands in for ../shared/data/eyepacs-dev, which the Makefile checks for
    data.mkdir()
    (data / "labels.csv").write_text("image,level\n")
    params = (dest / "params.yaml").read_text()
    make = ["make", "-o", ".venv/.installed", "real-cpu", f"BIN={Path(sys.executable).parent}",
            "PRESET=presets/tiny.yaml", f"REAL_DATA={data}"]
    for _ in range(2):  # a rerun on the same commit replaces the experiment
        out = _run(make, dest)
        assert (dest / "params.yaml").read_text() == params, out[-3000:]
        assert _run(["git", "status", "--porcelain", "--untracked-files=no"], dest, stdout_only=True) == ""
        assert not (dest / "models").exists() and not (dest / "results").exists()
    from dr_core.models.checkpoint import read_meta

    assert read_meta(dest / "runs/real-cpu/best_model.pth").params["train"]["loss"] == "focal"
    assert "test" in json.loads((dest / "runs/real-cpu/results/metrics.json").read_text())
    # the experiment ran through export: the card and the ONNX model are this model's, not the workspace's
    assert (dest / "runs/real-cpu/export/model.onnx").stat().st_size > 0
    card = (dest / "runs/real-cpu/results/MODEL_CARD.md").read_text()
    assert f"`{file_sha256(dest / 'runs/real-cpu/best_model.pth')}`" in card
    rows = json.loads(_run(["dvc", "exp", "show", "--json"], dest, stdout_only=True))
    named = [rev for row in rows for e in (row.get("experiments") or []) for rev in e["revs"]
             if rev.get("name") == "real-cpu"]
    assert len(named) == 1
    data_ = named[0]["data"]
    assert data_["params"]["params.yaml"]["data"]["train"]["loss"] == "focal"
    assert "test" in data_["metrics"]["results/headline.json"]["data"]
