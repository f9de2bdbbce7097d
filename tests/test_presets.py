"""Presets: YAML overrides checked against params.yaml and turned into `dvc exp run -S` args."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from dr_core.config import ConfigError
from dr_core.cli.presets import main
from dr_core.config.presets import merged, read_preset, to_set_args

ROOT = Path(__file__).resolve().parents[1]


def test_real_cpu_preset_is_valid_and_points_at_the_real_photos():
    overrides = read_preset(ROOT / "presets/real-cpu.yaml")
    flat = merged(ROOT / "params.yaml", overrides)
    assert flat["train.loss"] == "regression" and flat["evaluate.grade_rule"] == "qwk"
    assert flat["preprocess.cache_size"] >= flat["train.image_size"]
    assert flat["data.sources"] == {  # both populations; demo is gone
        "eyepacs": {"labels_csv": "../shared/data/eyepacs-dev/labels.csv", "img_dir": "../shared/data/eyepacs-dev/images"},
        "odir": {"labels_csv": "../shared/data/odir-dev/labels.csv", "img_dir": "../shared/data/odir-dev/images"}}
    args = to_set_args(overrides, absolute=True, root=ROOT)
    assert args[:2] == ["-S", "data.sources=null"]  # DVC: replace params.yaml's sources, then add the preset's
    labels = [a for a in args if a.startswith("+data.sources.eyepacs.labels_csv=")][0]
    assert Path(labels.split("=", 1)[1]).is_absolute()
    assert not [a for a in args if a != shlex.quote(a)]  # nothing for `$(...)` in the Makefile to mangle


def test_real_gpu_preset_is_valid_and_uses_both_sources_at_full_resolution():
    flat = merged(ROOT / "params.yaml", read_preset(ROOT / "presets/real-gpu.yaml"))
    assert set(flat["data.sources"]) == {"eyepacs", "odir"}
    assert flat["preprocess.cache_size"] >= flat["train.image_size"] >= 448  # ODIR's photos are 448 px
    assert flat["model.pretrained_file"] == "builtin" and flat["model.name"] == "tf_efficientnet_lite2"


def test_a_preset_cannot_leave_the_sources_empty(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("data:\n  sources: {}\n")
    with pytest.raises(ConfigError, match="data.sources replaces params.yaml's as a whole"):
        read_preset(empty)


def test_a_typo_in_a_preset_fails_with_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  los: focal\n")
    with pytest.raises(ConfigError, match="loss"):
        merged(ROOT / "params.yaml", read_preset(bad))
    assert main([str(bad), "--params", str(ROOT / "params.yaml")]) == 2
    assert "los" in capsys.readouterr().err
