from pathlib import Path

import pytest
import yaml

from conftest import REPO, committed_text
from dr_core.config import ConfigError, Params, fold_params, load_params, params_from_dict


def test_repository_params_load_and_validate():
    params = params_from_dict(yaml.safe_load(committed_text("params.yaml")))
    assert params.model.num_classes == 5
    assert params.train.loss in ("ce", "weighted_ce", "focal")


def test_tests_read_the_committed_params_not_the_workspace(tmp_path):
    """`dvc exp run -S ...` leaves its settings in params.yaml; the suite must still see the committed file."""
    import subprocess

    run = lambda *args: subprocess.run(args, cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    run("git", "init", "-q")
    (tmp_path / "params.yaml").write_text("train:\n  loss: weighted_ce\n")
    run("git", "add", "params.yaml")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "params")
    (tmp_path / "params.yaml").write_text("train:\n  loss: regression\n")
    assert "weighted_ce" in committed_text("params.yaml", tmp_path)


def test_every_guide_flag_has_a_param():
    raw = yaml.safe_load(committed_text("params.yaml"))
    flags = {
        "model-name": ("model", "name"), "num-classes": ("model", "num_classes"),
        "pretrained": ("model", "pretrained"), "two-stage": ("train", "two_stage"),
        "epochs-stage1": ("train", "epochs_stage1"), "epochs-stage2": ("train", "epochs_stage2"),
        "lr-stage1": ("train", "lr_stage1"), "lr-stage2": ("train", "lr_stage2"),
        "weight-decay": ("train", "weight_decay"), "loss": ("train", "loss"),
        "focal-gamma": ("train", "focal_gamma"), "advanced-aug": ("train", "advanced_aug"),
        "medical-preprocess": ("preprocess", "medical"), "image-size": ("train", "image_size"),
        "mixed-precision": ("train", "mixed_precision"), "batch-size": ("train", "batch_size"),
        "num-workers": ("train", "num_workers"), "patience": ("train", "patience"),
        "save-freq": ("train", "save_freq"), "val-split": ("split", "val"),
    }
    for flag, (section, key) in flags.items():
        assert key in raw[section], f"--{flag} has no params.yaml key {section}.{key}"
    assert "seed" in raw  # --random-seed
    # --labels-csv and --img-dir: each source's own, data.sources.<name>.labels_csv and .img_dir
    assert raw["data"]["sources"] and all({"labels_csv", "img_dir"} <= set(s) for s in raw["data"]["sources"].values())
    # --save-dir is the train stage's output path in dvc.yaml
    assert "--save-dir models" in (REPO / "dvc.yaml").read_text()


@pytest.mark.parametrize("raw, match", [
    ({"train": {"los": "focal"}}, r"unknown key 'train.los'.*Did you mean 'loss'"),
    ({"trian": {}}, r"unknown key 'trian'.*Did you mean 'train'"),
    ({"train": {"loss": "focall"}}, r"train.loss: got 'focall'.*\['ce', 'weighted_ce', 'focal', 'regression', 'ordinal'\].*'focal'"),
    ({"train": {"lr_stage1": -0.1}}, r"train.lr_stage1: got -0.1"),
    ({"train": {"batch_size": 2.5}}, r"train.batch_size: got 2.5, expected an integer"),
    ({"train": {"two_stage": "yes"}}, r"train.two_stage: got 'yes', expected true or false"),
    ({"model": {"name": "resnet5O"}}, r"model.name: timm does not know 'resnet5O'.*resnet50"),
    ({"evaluate": {"fellow_eye_scope": "grades"}}, r"evaluate.fellow_eye_scope: got 'grades'.*\['referable', 'all'\]"),
    ({"model": {"global_pool": "sum"}}, r"model.global_pool: got 'sum'.*\['avg', 'max', 'avgmax', 'gem'\]"),
    ({"model": {"global_pool": "catavgmax"}}, r"model.global_pool: got 'catavgmax'"),  # removed: no measured gain
    ({"model": {"head_norm": False}}, r"unknown key 'model.head_norm'"),
    ({"split": {"val": 0.6, "test": 0.5}}, r"split.val \+ split.test"),
    ({"cv": {"folds": [0, 2]}}, r"cv.folds: got \[0, 2\], expected the fold numbers 0..K-1 of K >= 2 folds"),
    ({"cv": {"folds": [0]}}, r"cv.folds: got \[0\], expected the fold numbers 0..K-1 of K >= 2"),
    ({"cv": {"folds": 5}}, r"cv.folds: got 5, expected a list of integers, e.g. \[0, 1, 2\]"),
    ({"cv": {"folds": [0, 1.5]}}, r"cv.folds\[1\]: got 1.5, expected an integer"),
    ({"data": {"on_bad_image": "ignore"}}, r"data.on_bad_image: got 'ignore'"),
    ({"train": {"aug_strength": 0}}, r"train.aug_strength: got 0.0, expected a number > 0"),
    ({"train": {"mixup_alpha": -0.2}}, r"train.mixup_alpha: got -0.2, expected 0 \(off\) or a number > 0"),
    ({"train": {"rank_weight": 1.0}}, r"unknown key 'train.rank_weight'"),  # removed: no measured gain
    ({"train": {"lr_stage1": float("inf")}}, r"train.lr_stage1: got inf, expected a finite number"),
    (yaml.safe_load("train: {warmup_epochs: .inf}"), r"train.warmup_epochs: got inf, expected a finite number"),
    ({"train": {"grad_clip": float("nan")}}, r"train.grad_clip: got nan, expected a finite number"),
    ({"train": {"image_size": 512}, "preprocess": {"cache_size": 448}},
     r"train.image_size: got 512, larger than preprocess.cache_size \(448\).*upsampled"),
])
def test_bad_settings_fail_with_the_key_and_choices(raw, match):
    with pytest.raises(ConfigError, match=match):
        params_from_dict(raw)


def test_scientific_notation_strings_are_floats():
    assert params_from_dict({"train": {"lr_stage1": "1e-4"}}).train.lr_stage1 == pytest.approx(1e-4)


def test_params_file_errors_name_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  los: ce\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_params(path)


def test_params_are_frozen():
    params = Params()
    with pytest.raises(Exception):
        params.train.loss = "ce"  # type: ignore[misc]


def test_a_stage_reports_a_settings_error_in_one_line(tmp_path):
    """A typo in params.yaml ends a stage with `error: ...` on stderr and exit 2, not a traceback."""
    import subprocess
    import sys

    (tmp_path / "params.yaml").write_text("train:\n  los: focal\n")
    out = subprocess.run([sys.executable, "-m", "stages.demo", "--out", str(tmp_path / "d"), "--params",
                          str(tmp_path / "params.yaml")], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2
    assert "unknown key 'train.los'" in out.stderr and "Traceback" not in out.stderr


def test_a_cross_validation_fold_sets_the_split_from_cv_folds():
    params = params_from_dict({"cv": {"folds": [0, 1, 2]}}, validate=False)
    split = fold_params(params, 2).split
    assert (split.folds, split.fold, split.test_fraction) == (3, 2, 1 / 3)
    assert params.split.folds == 0  # the main pipeline's split is left alone
    with pytest.raises(ConfigError, match=r"cross-validation fold 3 .*split.fold: got 3, expected a fold in 0..2"):
        fold_params(params, 3)


def test_a_change_to_a_stages_settings_while_it_runs_is_named(tmp_path):
    from dr_core.config.drift import ParamsChangedError, check_params_unchanged
    from stages.train import PARAMS

    path = tmp_path / "params.yaml"
    raw = yaml.safe_load(committed_text("params.yaml"))
    path.write_text(yaml.safe_dump(raw))
    started = load_params(path).only(PARAMS, "train").to_dict()
    check_params_unchanged(path, PARAMS, "train", started)
    raw["data"]["on_bad_image"], raw["evaluate"]["bootstrap"] = "error", 7  # not the train stage's
    path.write_text(yaml.safe_dump(raw))
    check_params_unchanged(path, PARAMS, "train", started)
    epochs, raw["train"]["epochs_stage2"], raw["train"]["loss"] = raw["train"]["epochs_stage2"], 99, "ordinal"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsChangedError, match=rf"params.yaml changed while the train stage ran \(another `dvc exp "
                                                 rf"run` in this workspace\?\): train.epochs_stage2: {epochs} -> 99; "
                                                 r"train.loss: '\w+' -> 'ordinal'\..*dvc exp run --queue"):
        check_params_unchanged(path, PARAMS, "train", started)
    path.write_text("train: [half written")
    with pytest.raises(ParamsChangedError, match="no longer loads"):
        check_params_unchanged(path, PARAMS, "train", started)


def test_a_stage_may_declare_one_entry_of_a_mapping():
    """A foreach stage declares its own source (data.sources.<name>) and sees no other."""
    from dr_core.config import UndeclaredParamError

    two = {"a": {"labels_csv": "a.csv", "img_dir": "a"}, "b": {"labels_csv": "b.csv", "img_dir": "b", "patient": "none"}}
    params = params_from_dict({"data": {"sources": two}}, validate=False)
    seen = params.only(["data.sources.b", "data.patient"], "sources")
    assert list(seen.data.sources) == ["b"] and seen.data.sources["b"].patient == "none"
    with pytest.raises(UndeclaredParamError, match=r"read 'data\.sources\.a'.*Add 'data\.sources\.a'"):
        seen.data.sources["a"]
    with pytest.raises(UndeclaredParamError, match=r"read 'data\.id_col'"):
        seen.data.sources["b"].resolved(seen.data)  # a source without its own id_col reads data.id_col
    assert seen.to_dict()["data"]["sources"] == {"b": {**two["b"], "id_col": "", "label_col": ""}}
    with pytest.raises(ConfigError, match=r"declares 'data\.sources\.c', but data\.sources has no entry 'c'"):
        params.only(["data.sources.c"], "sources")


def test_renamed_data_keys_say_where_they_went():
    with pytest.raises(ConfigError, match=r"data\.labels_csv is now data\.sources\.<name>\.labels_csv"):
        params_from_dict({"data": {"labels_csv": "x.csv"}}, validate=False)
    with pytest.raises(ConfigError, match=r"data\.sources: empty"):
        params_from_dict({"data": {"sources": {}}}, validate=False).data.validate()
    with pytest.raises(ConfigError, match=r"data\.sources\.x\.img_dir: missing"):
        params_from_dict({"data": {"sources": {"x": {"labels_csv": "x.csv"}}}}, validate=False).data.validate()
    with pytest.raises(ConfigError, match=r"data\.sources\.qwk: 'qwk' is the name of a metric"):
        params_from_dict({"data": {"sources": {"qwk": {"labels_csv": "x", "img_dir": "y"}}}}, validate=False).validate()
