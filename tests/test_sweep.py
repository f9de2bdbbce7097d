"""bench/sweep.py: the ablation run through the stage entry points, without DVC."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, fake_fundus

spec = importlib.util.spec_from_file_location("sweep", REPO / "bench" / "sweep.py")
sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep)


def _row(variant: str, seed: int, rc: int | str = 0, auc: float = 0.8) -> dict:
    row = {"variant": variant, "seed": seed, "rc": rc}
    if rc == 0:
        row.update({"qwk": 0.6, "qwk_argmax": 0.5, "auc": auc, "sens": 0.9, "spec": 0.4, "val_auc": auc + 0.05,
                    "val_qwk": 0.7, "seconds": 60.0})
    return row


def test_plan_shares_the_split_and_cache_only_where_their_settings_agree():
    runs = sweep.plan(REPO / "presets" / "real-cpu.yaml", ["preset", "ce", "ben"], [1, 2], {})
    key = {(r["variant"], r["seed"]): r["data_key"] for r in runs}
    assert [(r["variant"], r["seed"]) for r in runs][:3] == [("preset", 1), ("ce", 1), ("ben", 1)]  # seeds outermost
    assert key["preset", 1] == key["ce", 1]            # the loss does not touch the cache
    assert key["ben", 1] != key["preset", 1]           # preprocessing does
    assert key["preset", 2] != key["preset", 1]        # and so does the split's seed
    assert all(Path(r["params"]["data.img_dir"]).is_absolute() for r in runs)
    assert runs[1]["params"]["train.loss"] == "ce" and runs[0]["params"]["train.loss"] == "regression"


def test_markdown_adds_validation_columns_and_names_unfinished_runs():
    md = sweep.markdown([_row("preset", 1, auc=0.8), _row("preset", 2, auc=0.9), _row("ce", 1, rc=-9)])
    line = [x for x in md.splitlines() if x.startswith("| preset |")][0]
    assert line == ("| preset | the preset as it is | 1, 2 | 0.900 ± 0.071 | 0.700 ± 0.000 | 0.850 ± 0.071 | "
                    "0.600 ± 0.000 | 0.500 ± 0.000 | 0.900 ± 0.000 | 0.400 ± 0.000 | 60 |")
    assert "not finished: ce-s1" in md


def test_markdown_pairs_each_variant_with_the_preset_on_the_seeds_both_ran():
    rows = [_row("preset", 1, auc=0.80), _row("preset", 2, auc=0.90),
            _row("ce", 1, auc=0.83), _row("ce", 2, auc=0.86), _row("ce", 3, auc=0.99), _row("ben", 3)]
    md = sweep.markdown(rows)
    assert "Paired with `preset` on the same splits" in md
    line = [x for x in md.splitlines() if x.startswith("| ce | 1, 2 |")][0]  # seed 3 has no preset run
    assert line == ("| ce | 1, 2 | -0.005 (-0.040 to +0.030) | -0.005 (-0.040 to +0.030) | -0.005 (-0.040 to +0.030) "
                    "| +0.000 (+0.000 to +0.000) | 1 of 2 | not recorded |")
    rows[2]["val_auc"] = 0.80 + 0.05 + 0.01  # val rises by 0.01 where test rose by 0.03: held-out +0.02
    line = [x for x in sweep.markdown(rows).splitlines() if x.startswith("| ce | 1, 2 |")][0]
    cells = [c.strip() for c in line.split("|")]
    assert cells[3] == "-0.015 (-0.040 to +0.010)"  # val AUC: +0.01 and -0.04
    assert cells[4] == "-0.005 (-0.040 to +0.030)"  # test AUC: +0.03 and -0.04
    assert cells[5] == "-0.010 (-0.040 to +0.020)"  # held-out: the mean of the two, split by split
    assert not any(x.startswith("| ben | 3 |") for x in md.splitlines())  # no preset run on seed 3
    assert "Paired with" not in sweep.markdown([_row("ce", 1), _row("ce", 2)])
    # the machine column shows pairs that cross machines
    for row in rows:
        row["session"] = "AMD VM, 2 vCPU" if row["variant"] == "preset" else "Intel VM, 2 vCPU, -j 1"
    rows[0]["session"] = "Intel VM, 2 vCPU"
    line = [x for x in sweep.markdown(rows).splitlines() if x.startswith("| ce | 1, 2 |")][0]
    assert line.endswith("| 1 of 2 | Intel VM (preset: AMD VM + Intel VM) |")


def test_render_merges_saved_rows_and_forgets_runs_finished_elsewhere(tmp_path, capsys):
    (tmp_path / "a.json").write_text(json.dumps([_row("preset", 1), _row("preset", 2, rc="skipped")]))
    (tmp_path / "b.json").write_text(json.dumps([_row("preset", 2, auc=0.6), _row("ce", 3, rc=-9)]))
    assert sweep.main(["--render", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "| preset | the preset as it is | 1, 2 | 0.750 ± 0.141 |" in out
    assert "not finished: ce-s3" in out and "preset-s2" not in out


def _generated_preset(tmp_path: Path) -> Path:
    """A folder of 100 generated photos (APTOS layout) and a tiny preset that trains on it in seconds."""
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    grades = np.arange(100) % 5
    for i, g in enumerate(grades):
        img = fake_fundus(int(g), rng, 96).astype(np.int16) + rng.integers(-6, 7, (96, 96, 3))  # no two alike
        cv2.imwrite(str(images / f"img{i:03d}.png"), np.clip(img, 0, 255).astype(np.uint8)[:, :, ::-1])
    pd.DataFrame({"id_code": [f"img{i:03d}" for i in range(100)], "diagnosis": grades}).to_csv(
        tmp_path / "labels.csv", index=False)
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump({
        "data": {"labels_csv": str(tmp_path / "labels.csv"), "img_dir": str(images), "dedup_max_distance": -1},
        "preprocess": {"cache_size": 64, "workers": 2},
        "model": {"name": "resnet10t", "pretrained": False, "pretrained_file": ""},
        "train": {"image_size": 48, "loss": "regression", "epochs_stage1": 1, "epochs_stage2": 1, "batch_size": 16,
                  "num_workers": 0, "freeze_stride": 8, "monitor": "last", "device": "cpu"},
        "evaluate": {"grade_rule": "qwk"}}))
    return preset


@pytest.mark.slow
def test_sweep_trains_and_evaluates_two_variants_on_a_generated_folder(tmp_path):
    preset = _generated_preset(tmp_path)
    out = tmp_path / "sweep"
    rc = sweep.main(["--preset", str(preset), "--variants", "preset", "no_clahe", "--seeds", "1", "-j", "2",
                     "--out-dir", str(out), "--json", str(tmp_path / "rows.json"), "--md", str(tmp_path / "t.md")])
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert rc == 0, [(r["variant"], r["rc"], r.get("folder")) for r in rows]
    assert [(r["variant"], r["seed"]) for r in rows] == [("preset", 1), ("no_clahe", 1)]
    assert all(0.0 <= r["val_auc"] <= 1.0 and 0.0 <= r["auc"] <= 1.0 for r in rows)
    assert len(list((out / "data").iterdir())) == 2  # no_clahe has a cache of its own
    used = yaml.safe_load((out / "runs" / "no_clahe-s1" / "params.yaml").read_text())
    assert used["preprocess"]["clahe"] is False and used["train"]["loss"] == "regression"
    assert "| no_clahe | preprocessing: border crop only, no CLAHE | 1 |" in (tmp_path / "t.md").read_text()


@pytest.mark.slow
def test_folds_train_evaluate_and_pool_every_photo_once_on_a_generated_folder(tmp_path):
    preset = _generated_preset(tmp_path)
    out = tmp_path / "sweep"
    rc = sweep.main(["--preset", str(preset), "--variants", "preset", "--seeds", "1", "--folds", "2", "-j", "2",
                     "--out-dir", str(out), "--json", str(tmp_path / "rows.json")])
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert rc == 0, [(r["variant"], r["rc"], r.get("folder")) for r in rows]
    assert [(r.get("fold"), r.get("kind")) for r in rows] == [(0, None), (1, None), (None, "out_of_fold")]
    tested = [pd.read_csv(out / "runs" / f"preset-s1-f{k}" / "results" / "predictions.csv")["id"] for k in (0, 1)]
    assert not set(tested[0]) & set(tested[1]) and len(tested[0]) + len(tested[1]) == 100
    pooled = rows[2]
    assert pooled["n_images"] == 100 and pooled["n_folds"] == 2 and 0.0 <= pooled["referable_auc"] <= 1.0
    assert pooled["fold_referable_auc"] == pytest.approx([rows[0]["auc"], rows[1]["auc"]], abs=1e-5)


def test_a_split_that_fails_is_reported_for_each_run_and_tried_once(tmp_path):
    preset = tmp_path / "missing.yaml"
    preset.write_text(yaml.safe_dump({"data": {"labels_csv": str(tmp_path / "nowhere.csv"),
                                               "img_dir": str(tmp_path)}}))
    out = tmp_path / "sweep"
    rc = sweep.main(["--preset", str(preset), "--variants", "preset", "ce", "--seeds", "1", "--out-dir", str(out),
                     "--json", str(tmp_path / "rows.json")])
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert rc == 1 and [(r["variant"], r["rc"]) for r in rows] == [("preset", "no data"), ("ce", "no data")]
    (log,) = (out / "data").glob("*/log.txt")
    text = log.read_text()
    assert text.count("+ ") == 1 and "nowhere.csv" in text  # the split ran once, and its error names the file


def _fake_cache(folder: Path, sizes: dict[str, int]) -> Path:
    cache = folder / "cache"
    cache.mkdir(parents=True)
    start = 0
    for split, n in sizes.items():
        np.save(cache / f"{split}.npy", np.arange(start, start + n, dtype=np.uint8)[:, None, None, None]
                * np.ones((1, 4, 4, 3), np.uint8))
        pd.DataFrame({"id": [f"{split}{i}" for i in range(n)], "grade": np.arange(n) % 5}).to_csv(
            cache / f"{split}.csv", index=False)
        start += n
    (cache / "cache_info.json").write_text("{}")
    return folder


def test_with_val_in_train_appends_val_rows_to_train_and_keeps_val_and_test(tmp_path):
    data = _fake_cache(tmp_path / "abc", {"train": 5, "val": 3, "test": 2})
    both = sweep.with_val_in_train(data)
    cache = both / "cache"
    train = np.load(cache / "train.npy")
    table = pd.read_csv(cache / "train.csv")
    assert train.shape == (8, 4, 4, 3) and list(train[:, 0, 0, 0]) == list(range(8))
    assert list(table["id"]) == [f"train{i}" for i in range(5)] + [f"val{i}" for i in range(3)]
    assert list(np.load(cache / "test.npy")[:, 0, 0, 0]) == [8, 9]
    assert pd.read_csv(cache / "val.csv")["id"].tolist() == ["val0", "val1", "val2"]
    assert not (data / "cache" / "train.npy.tmp").exists() and np.load(data / "cache" / "train.npy").shape[0] == 5
    assert sweep.with_val_in_train(data) == both  # built once


def test_train_on_val_renames_the_variant_and_trains_on_the_merged_folder(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(sweep, "build_data", lambda run, out, deadline: _fake_cache(
        out / "data" / run["data_key"], {"train": 4, "val": 2, "test": 2}))
    monkeypatch.setattr(sweep, "train_and_evaluate", lambda run, data, out, deadline: seen.append((run, data)) or {
        "variant": run["variant"], "seed": run["seed"], "rc": 0, "change": run["change"], "qwk": 0.6,
        "qwk_argmax": 0.5, "auc": 0.8, "sens": 0.9, "spec": 0.4, "val_auc": 1.0, "val_qwk": 0.9, "seconds": 1.0})
    rc = sweep.main(["--variants", "preset", "--seeds", "7", "--train-on-val", "--out-dir", str(tmp_path / "s"),
                     "--md", str(tmp_path / "t.md")])
    assert rc == 0 and len(seen) == 1
    run, data = seen[0]
    assert run["variant"] == "preset+val" and data.name.endswith("-train+val")
    assert len(np.load(data / "cache" / "train.npy")) == 6
    assert "| preset+val | the preset as it is; trained on train+val (val figures in-sample) | 7 |" in (
        tmp_path / "t.md").read_text()


def test_plan_with_folds_runs_every_fold_of_each_seed_on_its_own_split():
    runs = sweep.plan(REPO / "presets" / "real-cpu.yaml", ["preset", "ce"], [42], {}, folds=3)
    assert [sweep.run_name(r) for r in runs] == ["preset-s42-f0", "ce-s42-f0", "preset-s42-f1", "ce-s42-f1",
                                                 "preset-s42-f2", "ce-s42-f2"]
    assert all(r["params"]["split.folds"] == 3 and r["params"]["split.fold"] == r["fold"] for r in runs)
    assert runs[0]["data_key"] == runs[1]["data_key"] != runs[2]["data_key"]  # a fold has its own split
    plain = sweep.plan(REPO / "presets" / "real-cpu.yaml", ["preset"], [42], {})[0]
    assert "fold" not in plain and sweep.run_name(plain) == "preset-s42" and plain["params"]["split.folds"] == 0


def test_folds_are_paired_fold_by_fold_and_pooled_into_an_out_of_fold_table(tmp_path, monkeypatch):
    photos = {0: ["1_left", "1_right", "2_left"], 1: ["3_left", "3_right", "2_right"]}
    grades = {"1_left": 0, "1_right": 2, "2_left": 0, "3_left": 3, "3_right": 0, "2_right": 0}

    def fake_run(run, data, out, deadline):
        folder = out / "runs" / sweep.run_name(run)
        (folder / "results").mkdir(parents=True)
        (folder / "params.yaml").write_text(yaml.safe_dump(
            {"model": {"num_classes": 5}, "evaluate": {"referable_grade": 2}}))
        ids = photos[run["fold"]]
        score = [0.9 if grades[i] >= 2 else 0.1 + 0.1 * n for n, i in enumerate(ids)]
        pd.DataFrame({"id": ids, "patient": [i.split("_")[0] for i in ids], "true_grade": [grades[i] for i in ids],
                      "pred_grade": [grades[i] for i in ids], "referable_score": score,
                      "referable_pred": [s > 0.5 for s in score]}).to_csv(folder / "results" / "predictions.csv")
        return {**_row(run["variant"], run["seed"], auc=0.7 + 0.1 * run["fold"]), "fold": run["fold"],
                "folder": str(folder)}

    monkeypatch.setattr(sweep, "build_data", lambda run, out, deadline: out)
    monkeypatch.setattr(sweep, "train_and_evaluate", fake_run)
    rc = sweep.main(["--variants", "preset", "ce", "--seeds", "7", "--folds", "2", "--out-dir", str(tmp_path / "s"),
                     "--json", str(tmp_path / "rows.json"), "--md", str(tmp_path / "t.md")])
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert rc == 0 and [(r["variant"], r.get("fold"), r.get("kind")) for r in rows] == [
        ("preset", 0, None), ("ce", 0, None), ("preset", 1, None), ("ce", 1, None),
        ("preset", None, "out_of_fold"), ("ce", None, "out_of_fold")]
    pooled = rows[4]
    assert pooled["n_images"] == 6 and pooled["n_folds"] == 2 and pooled["n_referable"] == 2
    assert pooled["referable_auc"] == 1.0 and pooled["referable_sensitivity"] == 1.0
    md = (tmp_path / "t.md").read_text()
    assert "| preset | the preset as it is | 7/f0, 7/f1 | 0.800 ± 0.071 |" in md  # val AUC 0.75 and 0.85
    assert "| ce | 7/f0, 7/f1 | +0.000 (+0.000 to +0.000) |" in md  # paired fold by fold
    assert "Out of fold: every photograph tested once" in md
    assert [x for x in md.splitlines() if x.startswith("| preset | 7 | 2 |")][0].startswith(
        "| preset | 7 | 2 | 6 (2) | 1.000 (")
    assert sweep.main(["--render", str(tmp_path / "rows.json")]) == 0  # saved pooled rows render again


def test_folds_left_unfinished_are_not_pooled(tmp_path):
    rows = [{**_row("preset", 7), "fold": 0, "folder": str(tmp_path)}, {**_row("preset", 7, rc=-9), "fold": 1}]
    assert sweep.pooled(rows, 2) == []
    assert "not finished: preset-s7-f1" in sweep.markdown(rows)
