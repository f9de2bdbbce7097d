"""Patient-grouped stratified split and the split stage end to end."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from dr_core.config import DataConfig, SourceConfig, SplitConfig, load_params
from dr_core.data.ingest import DataError
from dr_core.data.sources import check_stratifiable, ingest_source
from dr_core.data.split import SPLITS, assign_folds, assign_splits, class_weights, make_splits, run_split
from test_ingest import write_dataset

REPO = Path(__file__).resolve().parents[1]
EYEPACS_DEV = REPO.parent / "shared" / "data" / "eyepacs-dev"
FOUR_PER_GRADE = [(g, g) for g in range(5) for _ in range(4)]  # 20 patients, 40 photos


def split_folders(folders: dict[str, tuple[Path, Path]], out: Path, data: DataConfig = DataConfig(),
                  split: SplitConfig = SplitConfig(), seed: int = 0, workers: int = 1,
                  settings: dict[str, dict] | None = None) -> dict:
    """The sources stage for each ``name: (labels CSV, image folder)`` (with that source's own
    ``settings``), then the split stage, into ``out``; the sources' folders go to ``<out>-sources``."""
    sources = {name: SourceConfig(str(csv), str(img_dir), **(settings or {}).get(name, {}))
               for name, (csv, img_dir) in folders.items()}
    data = dataclasses.replace(data, sources=sources)
    sources_dir = out.parent / f"{out.name}-sources"
    for name, source in sources.items():
        ingest_source(name, source, data, 5, sources_dir / name, workers)
    return run_split(sources_dir, out, data, split, 5, seed)


def split_folder(csv: Path, img_dir: Path, out: Path, data: DataConfig = DataConfig(),
                 split: SplitConfig = SplitConfig(), seed: int = 0) -> dict:
    """One source named ``src``."""
    return split_folders({"src": (csv, img_dir)}, out, data, split, seed)


def _split_of(out: Path) -> pd.DataFrame:
    frames = [pd.read_csv(out / f"{name}.csv", dtype={"patient": str}).assign(split=name) for name in SPLITS]
    return pd.concat(frames, ignore_index=True)


def test_assignment_keeps_groups_whole_and_every_grade_everywhere():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(200), 2)  # two eyes per patient
    grades = np.repeat(rng.choice(5, 200, p=[0.7, 0.1, 0.12, 0.04, 0.04]), 2)
    grades[1::7] = rng.integers(0, 5, len(grades[1::7]))  # some patients with two grades
    index = assign_splits(grades, groups, (0.6, 0.2, 0.2), 5, np.random.default_rng(42))
    assert (pd.Series(index).groupby(groups).nunique() == 1).all()
    share = np.bincount(index, minlength=3) / len(index)
    assert np.abs(share - [0.6, 0.2, 0.2]).max() < 0.03
    for s in range(3):
        assert set(grades[index == s]) == set(range(5))


def test_assignment_reaches_every_split_with_three_groups_per_grade():
    grades = np.repeat(np.arange(5), 3)
    groups = np.arange(15)
    index = assign_splits(grades, groups, (0.7, 0.15, 0.15), 5, np.random.default_rng(0))
    for s in range(3):
        assert sorted(grades[index == s]) == [0, 1, 2, 3, 4]


def test_assignment_is_deterministic_for_a_seed():
    rng = np.random.default_rng(3)
    grades, groups = rng.integers(0, 5, 400), rng.integers(0, 150, 400)
    groups = pd.factorize(groups)[0]
    first = assign_splits(grades, groups, (0.6, 0.2, 0.2), 5, np.random.default_rng(7))
    again = assign_splits(grades, groups, (0.6, 0.2, 0.2), 5, np.random.default_rng(7))
    other = assign_splits(grades, groups, (0.6, 0.2, 0.2), 5, np.random.default_rng(8))
    assert (first == again).all() and (first != other).any()


def test_folds_test_every_photo_once_with_patients_whole_and_val_at_its_share():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(150), 2)
    grades = np.repeat(rng.choice(5, 150, p=[0.6, 0.1, 0.2, 0.05, 0.05]), 2)
    grades[1::9] = rng.integers(0, 5, len(grades[1::9]))
    folds = [assign_folds(grades, groups, 5, k, 0.2, 5, np.random.default_rng(42)) for k in range(5)]
    tested = np.stack([index == 2 for index in folds])  # (fold, photo)
    assert (tested.sum(axis=0) == 1).all()  # each photo is in exactly one test fold
    for index in folds:
        assert (pd.Series(index).groupby(groups).nunique() == 1).all()  # no patient straddles splits
        share = np.bincount(index, minlength=3) / len(index)
        assert np.abs(share - [0.6, 0.2, 0.2]).max() < 0.03, share  # val stays 0.2 of all photos
        assert set(grades[index == 2]) == set(range(5)) and set(grades[index == 1]) == set(range(5))
    # the folds come from the seed: another seed cuts other folds
    other = assign_folds(grades, groups, 5, 0, 0.2, 5, np.random.default_rng(7))
    assert ((other == 2) != tested[0]).any()


def test_make_splits_uses_the_fold_only_when_folds_are_set():
    table = pd.DataFrame({"id": [f"p{i}" for i in range(60)], "file": "x.png", "grade": np.arange(60) % 5,
                          "patient": [f"p{i // 2}" for i in range(60)], "group": np.arange(60) // 2})
    plain = make_splits(table, SplitConfig(), 5, seed=3)
    assert make_splits(table, SplitConfig(fold=0), 5, seed=3)["test"].equals(plain["test"])
    tests = [set(make_splits(table, SplitConfig(folds=3, fold=k), 5, seed=3)["test"]["id"]) for k in range(3)]
    assert all(18 <= len(t) <= 22 for t in tests)  # a third each, in whole patients
    assert sum(map(len, tests)) == 60 and set().union(*tests) == set(table["id"])


def test_train_fraction_thins_train_by_whole_patients_and_leaves_val_and_test_alone():
    rng = np.random.default_rng(1)
    table = pd.DataFrame({"id": [f"p{i}" for i in range(300)], "file": "x.png",
                          "grade": np.repeat(rng.choice(5, 150, p=[0.6, 0.1, 0.2, 0.05, 0.05]), 2),
                          "patient": [f"p{i // 2}" for i in range(300)], "group": np.arange(300) // 2})
    for settings in ({}, {"folds": 5, "fold": 2}):
        full = make_splits(table, SplitConfig(**settings), 5, seed=3)
        half = make_splits(table, SplitConfig(**settings, train_fraction=0.5), 5, seed=3)
        assert "unused" not in full and half["val"].equals(full["val"]) and half["test"].equals(full["test"])
        kept, left = set(half["train"]["id"]), set(half["unused"]["id"])
        assert not kept & left and kept | left == set(full["train"]["id"])  # nothing lost, nothing twice
        assert abs(len(kept) / len(full["train"]) - 0.5) < 0.05
        assert not set(half["train"]["patient"]) & set(half["unused"]["patient"])  # patients stay whole
        assert set(half["train"]["grade"]) == set(range(5))  # still stratified: every grade kept
        quarter = set(make_splits(table, SplitConfig(**settings, train_fraction=0.25), 5, seed=3)["train"]["id"])
        assert 0.2 < len(quarter) / len(full["train"]) < 0.3


def test_run_split_with_a_train_fraction_reports_what_it_leaves_out(tmp_path):
    csv, img_dir = write_dataset(tmp_path / "raw", FOUR_PER_GRADE, "eyepacs")
    summary = split_folder(csv, img_dir, tmp_path / "s", DataConfig(), SplitConfig(train_fraction=0.5), 1)
    unused = pd.read_csv(tmp_path / "s" / "unused.csv")
    assert summary["train_fraction"] == 0.5 and summary["n_train_unused"] == len(unused) > 0
    assert summary["splits"]["train"]["n_images"] + len(unused) + summary["splits"]["val"]["n_images"] \
        + summary["splits"]["test"]["n_images"] == summary["n_images"]
    plain = split_folder(csv, img_dir, tmp_path / "s", DataConfig(), SplitConfig(), 1)
    assert "train_fraction" not in plain and not (tmp_path / "s" / "unused.csv").exists()  # no stale file


@pytest.mark.parametrize(("settings", "message"), [
    ({"folds": 1}, r"split.folds: got 1, expected 0 .* or a number of folds >= 2"),
    ({"folds": 5, "fold": 5}, r"split.fold: got 5, expected a fold in 0..4 \(split.folds is 5\)"),
    ({"fold": 2}, r"split.fold: got 2, expected 0 while split.folds is 0"),
    ({"folds": 2, "val": 0.45}, r"split.val \+ 1 / split.folds: got 0.95"),
    ({"train_fraction": 0.0}, r"split.train_fraction: got 0.0, expected a fraction in \(0, 1\]"),
    ({"train_fraction": 1.5}, r"split.train_fraction: got 1.5"),
])
def test_fold_settings_are_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        SplitConfig(**settings).validate()


def test_too_few_patients_for_a_grade():
    grades = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4])
    patients = np.array(["a", "b", "c", "d", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m"])
    with pytest.raises(DataError, match=r"labels\.csv: grade 1 \(Mild\) has photographs from 1 patients.*"
                                        r"at least 3.*Merge grade 1.*more patients"):
        check_stratifiable(grades, patients, 5, "patients", Path("labels.csv"))
    with pytest.raises(DataError, match=r"grade 1 has photographs from 0 patients"):
        check_stratifiable(np.zeros(9, int), np.arange(9), 3, "patients", Path("labels.csv"))


def test_class_weights_are_inverse_frequency_with_mean_one_per_photo():
    grades = np.array([0] * 6 + [1] * 3 + [2])
    weights = class_weights(grades, 3)
    assert np.allclose(weights, [10 / 18, 10 / 9, 10 / 3])
    assert np.isclose(weights[grades].mean(), 1.0)


def test_run_split_writes_patient_grouped_outputs(tmp_path):
    csv, img_dir = write_dataset(tmp_path / "raw", FOUR_PER_GRADE, "eyepacs")
    out = tmp_path / "split"
    summary = split_folder(csv, img_dir, out, DataConfig(), SplitConfig(), 1)
    rows = _split_of(out)
    assert rows.columns.tolist() == ["id", "source", "source_id", "file", "grade", "patient", "group", "digest",
                                     "split"]
    assert len(rows) == 40 and rows["file"].str.endswith(".jpeg").all()
    assert (rows["id"] == "src/" + rows["source_id"]).all() and rows["patient"].str.startswith("src/").all()
    assert (rows.groupby("patient")["split"].nunique() == 1).all()
    for name in SPLITS:
        assert set(rows.loc[rows["split"] == name, "grade"]) == set(range(5))
        assert summary["splits"][name]["n_images"] == (rows["split"] == name).sum()
    assert summary["sources"]["src"]["layout"] == "eyepacs" and summary["sources"]["src"]["patient_source"] == "eyepacs"
    assert summary["sources"]["src"]["n_images"] == 40 and summary["n_patients"] == 20
    assert summary["n_bad"] == 0 and summary["n_duplicate_groups"] == 0
    assert set(summary["class_weights"]) == {"0", "1", "2", "3", "4"}
    assert json.loads((out / "summary.json").read_text()) == summary
    assert pd.read_csv(out / "bad_images.csv").columns.tolist() == ["source", "id", "line", "file", "reason"]
    assert not list(out.glob("*.tmp"))


def test_eyepacs_ids_with_extensions_split_by_patient(tmp_path):
    """Issue 28: ids written as file names (``10_left.jpeg``) group both eyes as bare ids do."""
    csv, img_dir = write_dataset(tmp_path / "raw", FOUR_PER_GRADE * 3, "eyepacs")
    labels = pd.read_csv(csv)
    labels.assign(image=labels["image"] + ".jpeg").to_csv(csv, index=False)
    summary = split_folder(csv, img_dir, tmp_path / "split")
    rows = _split_of(tmp_path / "split")
    assert summary["sources"]["src"]["patient_source"] == "eyepacs" and summary["n_patients"] == 60
    number = rows["source_id"].str.extract(r"^(\d+)_", expand=False)
    assert (rows.groupby(number)["split"].nunique() == 1).all()  # no patient in two splits


def test_run_split_with_folds_records_the_fold_and_tests_every_patient_once(tmp_path):
    csv, img_dir = write_dataset(tmp_path / "raw", FOUR_PER_GRADE, "eyepacs")
    tested = []
    for fold in range(4):
        summary = split_folder(csv, img_dir, tmp_path / f"f{fold}", DataConfig(), SplitConfig(folds=4, fold=fold), 1)
        assert summary["folds"] == 4 and summary["test_fold"] == fold
        tested += pd.read_csv(tmp_path / f"f{fold}" / "test.csv", dtype={"patient": str})["patient"].unique().tolist()
    assert sorted(tested) == sorted(_split_of(tmp_path / "f0")["patient"].unique())  # 20 patients, once each
    assert "folds" not in split_folder(csv, img_dir, tmp_path / "plain", DataConfig(), SplitConfig(), 1)


def test_duplicates_stay_with_every_patient_they_touch(tmp_path):
    csv, img_dir = write_dataset(tmp_path / "raw", FOUR_PER_GRADE, "aptos", patient_column=True)
    labels = pd.read_csv(csv)
    shutil.copy(img_dir / "img000l.png", img_dir / "copy_a.png")  # exact copy of patient P0
    near = np.clip(cv2.imread(str(img_dir / "img007r.png")).astype(int) + 5, 0, 255).astype(np.uint8)
    cv2.imwrite(str(img_dir / "copy_b.jpeg"), near, [cv2.IMWRITE_JPEG_QUALITY, 95])  # near copy of P7
    extra = pd.DataFrame({"id_code": ["copy_a", "copy_b"], "diagnosis": [1, 1], "patient_id": ["X1", "X2"]})
    pd.concat([labels, extra]).to_csv(csv, index=False)
    out = tmp_path / "split"
    summary = split_folder(csv, img_dir, out, DataConfig(dedup_max_distance=8), SplitConfig(), 0)
    rows = _split_of(out).set_index("source_id")
    assert rows.loc["copy_a", "group"] == rows.loc["img000r", "group"]  # P0's other eye too
    assert rows.loc["copy_a", "split"] == rows.loc["img000r", "split"]
    assert rows.loc["copy_b", "split"] == rows.loc["img007l", "split"]
    assert summary["n_duplicate_groups"] == 2
    report = pd.read_csv(out / "duplicates.csv")
    assert sorted(report["id"]) == ["src/copy_a", "src/copy_b", "src/img000l", "src/img007r"]
    assert set(report["kind"]) == {"exact", "near"}


def test_skip_policy_reports_bad_and_missing_images(tmp_path):
    grades = [(g, g) for g in range(5) for _ in range(6)]  # 60 photos
    csv, img_dir = write_dataset(tmp_path / "raw", grades, "eyepacs")
    (img_dir / "10_left.jpeg").write_bytes((img_dir / "10_left.jpeg").read_bytes()[:300])
    (img_dir / "11_right.jpeg").unlink()
    out = tmp_path / "split"
    with pytest.raises(DataError, match=r"^source 'src': .*1 of 60 photographs listed in .*labels\.csv have no "
                                        r"image file.*line 5: '11_right'"):
        split_folder(csv, img_dir, out, DataConfig(on_bad_image="error"), SplitConfig(), 0)
    assert not out.exists() and not (tmp_path / "split-sources" / "src").exists()
    summary = split_folder(csv, img_dir, out, DataConfig(on_bad_image="skip"), SplitConfig(), 0)
    bad = pd.read_csv(out / "bad_images.csv", keep_default_na=False)
    assert bad.to_dict("records") == [
        {"source": "src", "id": "10_left", "line": 2, "file": "10_left.jpeg",
         "reason": "truncated JPEG: no end-of-image marker (FF D9)"},
        {"source": "src", "id": "11_right", "line": 5, "file": "", "reason": "missing file"}]
    assert summary["n_bad"] == 2 and summary["n_images"] == 58 and summary["sources"]["src"]["n_bad"] == 2
    assert "src/10_left" not in set(_split_of(out)["id"])


def test_too_many_bad_images_stop_under_either_policy(tmp_path):
    csv, img_dir = write_dataset(tmp_path / "raw", FOUR_PER_GRADE, "eyepacs")
    for name in ("10_left", "11_left", "12_left"):
        cv2.imwrite(str(img_dir / f"{name}.jpeg"), np.zeros((64, 64, 3), np.uint8))
    for policy in ("skip", "error"):
        with pytest.raises(DataError, match=r"3 of 40 photographs \(7\.5%\) are unusable.*max_bad_fraction"):
            split_folder(csv, img_dir, tmp_path / "out", DataConfig(on_bad_image=policy), SplitConfig(), 0)


def test_split_is_deterministic_for_a_seed(tmp_path):
    csv, img_dir = write_dataset(tmp_path / "raw", FOUR_PER_GRADE * 2, "eyepacs")
    for run, seed in (("a", 5), ("b", 5), ("c", 6)):
        split_folder(csv, img_dir, tmp_path / run, DataConfig(), SplitConfig(), seed)
    read = lambda run: [(tmp_path / run / f"{s}.csv").read_text() for s in SPLITS]  # noqa: E731
    assert read("a") == read("b") and read("a") != read("c")


def test_too_few_patients_stop_before_images_are_read(tmp_path):
    csv, img_dir = write_dataset(tmp_path / "raw", [(g, g) for g in range(5) for _ in range(3)][:-1])
    shutil.rmtree(img_dir)
    img_dir.mkdir()
    with pytest.raises(DataError, match=r"source 'src': .*grade 4 \(Proliferative\) has photographs from 2 patients"):
        split_folder(csv, img_dir, tmp_path / "out", DataConfig(), SplitConfig(), 0)


def _load_stage(name: str = "split"):
    spec = importlib.util.spec_from_file_location(f"{name}_stage", REPO / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_stages(params: Path, out: Path, monkeypatch) -> int:
    """`python -m stages.sources` for each source of ``params``, then `python -m stages.split`; the first
    non-zero exit code, else 0."""
    split = _load_stage()
    # Full validation imports timm to check model.name (seconds); the split stage needs none of it.
    monkeypatch.setattr(split, "load_params", lambda path: load_params(path, validate=False))
    sources_dir = out.parent / f"{out.name}-sources"
    for name in yaml.safe_load(params.read_text())["data"]["sources"]:
        code = _load_stage("sources").main(["--params", str(params), "--source", name, "--out", str(sources_dir / name)])
        if code:
            return code
    return split.main(["--params", str(params), "--sources", str(sources_dir), "--out", str(out),
                       "--metrics", str(out / "m" / "split.json")])


def test_stage_exits_1_with_the_message_and_no_traceback(tmp_path, capsys, monkeypatch):
    csv, img_dir = write_dataset(tmp_path / "raw", FOUR_PER_GRADE, "eyepacs")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 3, "preprocess": {"workers": 1},
                                      "data": {"sources": {"eye": {"labels_csv": str(csv), "img_dir": str(img_dir)}}}}))
    assert _run_stages(params, tmp_path / "out", monkeypatch) == 0
    assert json.loads((tmp_path / "out" / "m" / "split.json").read_text())["n_images"] == 40
    csv.write_text(csv.read_text().replace("10_right,0", "10_right,2.5"))
    assert _run_stages(params, tmp_path / "out2", monkeypatch) == 1
    err = capsys.readouterr().err
    assert "error: source 'eye': " in err and "line 3: '2.5'" in err and "Traceback" not in err


def test_stage_reads_paths_with_spaces_and_shell_characters_from_params(tmp_path, monkeypatch):
    root = tmp_path / "my photos `touch PWNED` $(touch PWNED2)"
    csv, img_dir = write_dataset(root, FOUR_PER_GRADE, "eyepacs")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 3, "preprocess": {"workers": 1},
                                      "data": {"sources": {"eye": {"labels_csv": str(csv), "img_dir": str(img_dir)}}}}))
    monkeypatch.chdir(tmp_path)
    assert _run_stages(params, tmp_path / "out", monkeypatch) == 0
    assert len(pd.read_csv(tmp_path / "out" / "train.csv")) > 0
    assert not list(tmp_path.rglob("PWNED*"))


@pytest.mark.slow
def test_real_eyepacs_dev_split_keeps_patients_apart(tmp_path):
    if not (EYEPACS_DEV / "labels.csv").exists():
        pytest.skip(f"{EYEPACS_DEV} not present")
    start = time.perf_counter()
    summary = split_folders({"eyepacs": (EYEPACS_DEV / "labels.csv", EYEPACS_DEV / "images")}, tmp_path / "split",
                            DataConfig(on_bad_image="skip"), SplitConfig(), seed=42, workers=0)
    assert time.perf_counter() - start < 30
    rows = _split_of(tmp_path / "split")
    assert summary["sources"]["eyepacs"]["layout"] == "eyepacs" and summary["n_patients"] == 359
    assert summary["n_bad"] <= 3 and len(rows) == 718 - summary["n_bad"]
    assert (rows.groupby("patient")["split"].nunique() == 1).all()
    for name in SPLITS:
        assert set(rows.loc[rows["split"] == name, "grade"]) == set(range(5))
