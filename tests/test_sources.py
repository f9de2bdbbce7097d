"""Several sources in one pipeline: each validated on its own, ids namespaced, the split stratified by source
and grade, duplicates found across sources, and every bad input named by its source."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from dr_core.config import ConfigError, DataConfig, SourceConfig, SplitConfig, params_from_dict
from dr_core.data.ingest import DataError
from dr_core.data.sources import ingest_source, read_sources
from dr_core.data.split import SPLITS, run_split
from test_ingest import write_dataset
from test_split import FOUR_PER_GRADE, _split_of, split_folders

NO_GRADE_4 = [(0, 0)] * 12 + [(g, g) for g in (1, 2, 3) for _ in range(4)]  # 24 patients, 48 photos


def _two(tmp_path, layout_b: str = "eyepacs", grades_b=NO_GRADE_4):
    a = write_dataset(tmp_path / "a", FOUR_PER_GRADE, "eyepacs", seed=1)
    b = write_dataset(tmp_path / "b", grades_b, layout_b, seed=2)
    return {"a": a, "b": b}


def test_ids_and_patients_are_namespaced_by_source(tmp_path):
    folders = _two(tmp_path)  # both EyePACS: ids 10_left, 10_right, ... in each
    summary = split_folders(folders, tmp_path / "split")
    rows = _split_of(tmp_path / "split").set_index("id")
    assert {"a/10_left", "b/10_left"} <= set(rows.index)
    assert rows.loc["a/10_left", "patient"] == "a/10" and rows.loc["b/10_left", "patient"] == "b/10"
    assert rows.loc["a/10_left", "source_id"] == rows.loc["b/10_left", "source_id"] == "10_left"
    assert rows.loc["a/10_left", "group"] != rows.loc["b/10_left", "group"]  # patient 10 of a is not b's
    assert rows.loc["a/10_left", "group"] == rows.loc["a/10_right", "group"]
    assert summary["n_patients"] == 20 + 24
    assert {name: s["n_images"] for name, s in summary["sources"].items()} == {"a": 40, "b": 48}


def test_each_split_holds_each_sources_grades_in_proportion(tmp_path):
    summary = split_folders(_two(tmp_path), tmp_path / "split")
    rows = _split_of(tmp_path / "split")
    for name in SPLITS:
        part = rows[rows["split"] == name]
        assert set(part.loc[part["source"] == "a", "grade"]) == {0, 1, 2, 3, 4}, name
        assert set(part.loc[part["source"] == "b", "grade"]) == {0, 1, 2, 3}, name
        share_b = (part["source"] == "b").mean()
        assert abs(share_b - 48 / 88) < 0.1, (name, share_b)
        assert summary["splits"][name]["sources"] == part["source"].value_counts().to_dict()
    # grade 0 of b (12 patients) goes 60/20/20 like everything else
    counts = rows[(rows["source"] == "b") & (rows["grade"] == 0)].groupby("split").size()
    assert counts["train"] > counts["val"] > 0 and counts["test"] > 0


def test_a_photo_in_two_sources_is_reported_with_both_and_kept_in_one_split(tmp_path):
    folders = _two(tmp_path)
    labels_b, img_b = folders["b"]
    shutil.copy(folders["a"][1] / "12_left.jpeg", img_b / "99_left.jpeg")  # a's patient 12 again, in b
    table = pd.read_csv(labels_b)
    pd.concat([table, pd.DataFrame({"image": ["99_left"], "level": [1]})]).to_csv(labels_b, index=False)
    summary = split_folders(folders, tmp_path / "split")
    rows = _split_of(tmp_path / "split").set_index("id")
    assert rows.loc["b/99_left", "split"] == rows.loc["a/12_left", "split"] == rows.loc["a/12_right", "split"]
    assert rows.loc["b/99_left", "group"] == rows.loc["a/12_right", "group"]  # a's other eye joins too
    report = pd.read_csv(tmp_path / "split" / "duplicates.csv")
    assert report[["id", "source", "kind"]].to_dict("records") == [
        {"id": "a/12_left", "source": "a", "kind": "exact"}, {"id": "b/99_left", "source": "b", "kind": "exact"}]
    assert summary["n_cross_source_duplicate_groups"] == 1


def test_different_layouts_and_per_source_settings(tmp_path):
    a = write_dataset(tmp_path / "a", FOUR_PER_GRADE, "eyepacs", seed=1)
    b_csv, b_img = write_dataset(tmp_path / "b", FOUR_PER_GRADE, "aptos", patient_column=True, seed=2)
    pd.read_csv(b_csv).rename(columns={"id_code": "photo", "diagnosis": "dr", "patient_id": "subject"}) \
        .to_csv(b_csv, index=False)
    settings = {"b": {"id_col": "photo", "label_col": "dr", "patient": "subject"}}
    summary = split_folders({"a": a, "b": (b_csv, b_img)}, tmp_path / "split", settings=settings)
    assert summary["sources"]["a"]["layout"] == "eyepacs" and summary["sources"]["b"]["layout"] == "custom"
    assert summary["sources"]["b"]["patient_source"] == "column:subject"
    rows = _split_of(tmp_path / "split")
    assert set(rows.loc[rows["source"] == "b", "patient"]) == {f"b/P{p}" for p in range(20)}


def test_two_sources_reading_the_same_folder_are_refused(tmp_path):
    csv, img_dir = write_dataset(tmp_path / "a", FOUR_PER_GRADE)
    same = {"labels_csv": str(csv), "img_dir": str(img_dir)}
    also = {"labels_csv": str(tmp_path / "a" / "." / "labels.csv"), "img_dir": str(img_dir) + "/"}
    with pytest.raises(ConfigError, match=r"data\.sources: 'one' and 'two' both read .*labels\.csv.*count twice"):
        params_from_dict({"data": {"sources": {"one": same, "two": also}}}, validate=False).data.validate()
    with pytest.raises(ConfigError, match=r"evaluate\.external\.ext: reads the same .* as data\.sources\.one"):
        params_from_dict({"data": {"sources": {"one": same}}, "evaluate": {"external": {"ext": also}}},
                         validate=False).validate()


@pytest.mark.parametrize("missing", ["labels", "images"])
def test_a_missing_folder_or_labels_file_names_the_source(tmp_path, missing):
    folders = _two(tmp_path)
    csv, img_dir = folders["b"]
    if missing == "labels":
        csv.unlink()
        message = r"^source 'b': .*labels\.csv: labels CSV not found.*data\.sources\.<name>\.labels_csv"
    else:
        shutil.rmtree(img_dir)
        message = r"^source 'b': .*images: image folder not found.*data\.sources\.<name>\.img_dir"
    with pytest.raises(DataError, match=message):
        split_folders(folders, tmp_path / "split")


def test_too_few_patients_of_a_grade_in_one_source_names_source_and_grade(tmp_path):
    folders = _two(tmp_path, grades_b=NO_GRADE_4 + [(4, 4), (4, 4)])  # two patients of grade 4 in b
    with pytest.raises(DataError, match=r"^source 'b': .*grade 4 \(Proliferative\) has photographs from 2 patients;"
                                        r".* at least 3 \(one per split\) or none"):
        split_folders(folders, tmp_path / "split")


def test_a_grade_too_rare_over_all_sources_names_them(tmp_path):
    a = write_dataset(tmp_path / "a", [(g, g) for g in range(4) for _ in range(4)], seed=1)
    b = write_dataset(tmp_path / "b", NO_GRADE_4, seed=2)
    with pytest.raises(DataError, match=r"^sources 'a', 'b': grade 4 \(Proliferative\) has photographs from 0 "
                                        r"patient groups"):
        split_folders({"a": a, "b": b}, tmp_path / "split")


def test_bad_photos_are_listed_and_counted_per_source(tmp_path):
    folders = _two(tmp_path, grades_b=NO_GRADE_4 + [(0, 0)] * 6)  # 60 photos in b: one bad is under 5%
    cv2.imwrite(str(folders["b"][1] / "11_left.jpeg"), np.zeros((64, 64, 3), np.uint8))
    summary = split_folders(folders, tmp_path / "split")
    bad = pd.read_csv(tmp_path / "split" / "bad_images.csv")
    assert bad[["source", "id", "line"]].to_dict("records") == [{"source": "b", "id": "11_left", "line": 4}]
    assert summary["sources"]["b"]["n_bad"] == 1 and summary["sources"]["a"]["n_bad"] == 0 and summary["n_bad"] == 1
    assert summary["sources"]["b"]["n_rows"] == 60 and summary["sources"]["b"]["n_images"] == 59


def test_the_split_reads_only_listed_sources_and_refuses_stale_ones(tmp_path, caplog):
    folders = _two(tmp_path)
    split_folders(folders, tmp_path / "split")
    sources_dir = tmp_path / "split-sources"
    only_a = DataConfig(sources={"a": SourceConfig(str(folders["a"][0]), str(folders["a"][1]))})
    summary = run_split(sources_dir, tmp_path / "split", only_a, SplitConfig(), 5, 0)
    assert list(summary["sources"]) == ["a"] and set(_split_of(tmp_path / "split")["source"]) == {"a"}
    assert "ignoring b, not in data.sources" in caplog.text
    renamed = DataConfig(sources={"c": only_a.sources["a"]})
    with pytest.raises(DataError, match=r"^source 'c': .*split-sources/c not found.*sources@c.*dvc repro"):
        read_sources(sources_dir, renamed)
    other = DataConfig(sources={"a": SourceConfig(str(folders["a"][0]), str(folders["a"][1]), patient="none")})
    with pytest.raises(DataError, match=r"^source 'a': .* other settings than params\.yaml's \(patient\)"):
        read_sources(sources_dir, other)


def test_a_source_writes_its_photos_fingerprints_and_summary(tmp_path):
    csv, img_dir = write_dataset(tmp_path / "a", FOUR_PER_GRADE)
    data = DataConfig(sources={"a": SourceConfig(str(csv), str(img_dir))})
    summary = ingest_source("a", data.sources["a"], data, 5, tmp_path / "out", workers=1)
    photos = pd.read_csv(tmp_path / "out" / "photos.csv", dtype=str)
    assert photos.columns.tolist() == ["id", "line", "grade", "patient", "file", "digest", "phash"]
    assert len(photos) == 40 and photos["phash"].str.fullmatch(r"[0-9a-f]{16}").all()
    assert np.load(tmp_path / "out" / "signatures.npy").shape[0] == 40
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    assert summary["settings"]["img_dir"] == str(img_dir) and summary["n_patients"] == 20
