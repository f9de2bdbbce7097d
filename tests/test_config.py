from pathlib import Path

import pytest
import yaml

from dr_core.config import ConfigError, Params, fold_params, load_params, params_from_dict

REPO = Path(__file__).resolve().parents[1]


def test_repository_params_load_and_validate():
    params = load_params(REPO / "params.yaml")
    assert params.model.num_classes == 5
    assert params.train.loss in ("ce", "weighted_ce", "focal")


def test_every_guide_flag_has_a_param():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    flags = {
        "labels-csv": ("data", "labels_csv"), "img-dir": ("data", "img_dir"),
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
    ({"model": {"global_pool": "sum"}}, r"model.global_pool: got 'sum'.*\['avg', 'max', 'avgmax', 'catavgmax', 'gem'\]"),
    ({"split": {"val": 0.6, "test": 0.5}}, r"split.val \+ split.test"),
    ({"cv": {"folds": [0, 2]}}, r"cv.folds: got \[0, 2\], expected the fold numbers 0..K-1 of K >= 2 folds"),
    ({"cv": {"folds": [0]}}, r"cv.folds: got \[0\], expected the fold numbers 0..K-1 of K >= 2"),
    ({"cv": {"folds": 5}}, r"cv.folds: got 5, expected a list of integers, e.g. \[0, 1, 2\]"),
    ({"cv": {"folds": [0, 1.5]}}, r"cv.folds\[1\]: got 1.5, expected an integer"),
    ({"data": {"on_bad_image": "ignore"}}, r"data.on_bad_image: got 'ignore'"),
    ({"train": {"aug_strength": 0}}, r"train.aug_strength: got 0.0, expected a number > 0"),
    ({"train": {"mixup_alpha": -0.2}}, r"train.mixup_alpha: got -0.2, expected 0 \(off\) or a number > 0"),
    ({"train": {"rank_weight": -1}}, r"train.rank_weight: got -1.0, expected 0 \(off\) or a number > 0"),
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


def test_a_cross_validation_fold_sets_the_split_from_cv_folds():
    params = params_from_dict({"cv": {"folds": [0, 1, 2]}}, validate=False)
    split = fold_params(params, 2).split
    assert (split.folds, split.fold, split.test_fraction) == (3, 2, 1 / 3)
    assert params.split.folds == 0  # the main pipeline's split is left alone
    with pytest.raises(ConfigError, match=r"cross-validation fold 3 .*split.fold: got 3, expected a fold in 0..2"):
        fold_params(params, 3)
