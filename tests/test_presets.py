"""Presets: YAML overrides checked against params.yaml and turned into `dvc exp run -S` args."""
from __future__ import annotations

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
    args = to_set_args(overrides, absolute=True, root=ROOT)
    labels = [a for a in args if a.startswith("data.labels_csv=")][0]
    assert Path(labels.split("=", 1)[1]).is_absolute()


def test_a_typo_in_a_preset_fails_with_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  los: focal\n")
    with pytest.raises(ConfigError, match="loss"):
        merged(ROOT / "params.yaml", read_preset(bad))
    assert main([str(bad), "--params", str(ROOT / "params.yaml")]) == 2
    assert "los" in capsys.readouterr().err
