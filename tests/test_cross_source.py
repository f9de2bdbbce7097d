"""research/cross_source.py: one training per subset of the preset's sources, and the table of them."""
from __future__ import annotations

from pathlib import Path

from research.cross_source import run_args, subsets, table

ROOT = Path(__file__).resolve().parents[1]


def test_each_source_alone_then_all_on_the_presets_split():
    preset = ROOT / "presets" / "real-cpu.yaml"
    assert subsets(preset) == ["eyepacs", "odir", "all"]
    args = run_args(preset, "odir")
    assert args[:6] == ["dvc", "exp", "run", "--temp", "--name", "xs-odir"]
    assert args[-2:] == ["-S", "train.sources=[odir]"] and run_args(preset, "all")[-1] == "train.sources=[]"
    # the split is the preset's, of every source: data.sources is not narrowed
    assert "+data.sources.eyepacs.labels_csv=" in " ".join(args) and "+data.sources.odir.img_dir=" in " ".join(args)


def test_table_has_a_row_per_trained_and_tested_source_with_intervals():
    block = {"n_images": 143, "qwk": 0.7, "qwk_ci_low": 0.6, "qwk_ci_high": 0.8, "referable_auc": 0.9,
             "referable_sensitivity": 0.85, "referable_specificity": 0.8}
    metrics = {"test": {"qwk": 0.7, "per_class": {"No DR": {"f1": 0.9}}, "eyepacs": block,
                        "odir": {**block, "n_images": 1000}}}
    text = table({"eyepacs": metrics, "all": metrics}).splitlines()
    assert len(text) == 2 + 4
    assert text[2].startswith("| eyepacs | eyepacs | 143 | 0.900 | 0.700 (0.60-0.80) | 0.850 | 0.800 |")
    assert text[5].startswith("| all | odir | 1000 |")
