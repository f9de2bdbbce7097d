"""CheckpointMeta: what a checkpoint says about itself, typed, validated and stored as a plain dict."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from dr_core.config import GRADE_NAMES, PreprocessConfig
from dr_core.models.checkpoint import CheckpointError, CheckpointMeta, load_checkpoint, read_meta, save_checkpoint


def _meta(**changes) -> CheckpointMeta:
    base = CheckpointMeta(model_name="resnet10t", num_classes=5, image_size=64, mean=(0.5,) * 3, std=(0.25,) * 3,
                          preprocess=PreprocessConfig(cache_size=64, clahe_clip=3.0), class_names=GRADE_NAMES,
                          head="ordinal", global_pool="gem", referable_grade=3, channels_last=True, epoch=4,
                          stage=2, params={"train": {"loss": "ordinal"}})
    return dataclasses.replace(base, **changes)


def test_the_stored_dict_reads_back_as_the_same_meta():
    meta = _meta()
    stored = meta.to_dict()
    assert stored["preprocess"]["clahe_clip"] == 3.0 and stored["mean"] == [0.5] * 3  # plain types on disk
    assert CheckpointMeta.from_dict(stored) == meta


def test_a_saved_checkpoint_keeps_its_meta(tmp_path):
    meta = _meta(head="classification", global_pool="avg")
    import timm

    save_checkpoint(tmp_path / "m.pth", timm.create_model("resnet10t", num_classes=5), meta)
    assert read_meta(tmp_path / "m.pth") == meta
    model, loaded = load_checkpoint(tmp_path / "m.pth")
    assert loaded == meta and model.get_classifier().out_features == 5


def test_older_metas_take_the_old_meanings():
    """Written before heads, poolings, and the top-level referable_grade and channels_last existed."""
    old = {"model_name": "resnet10t", "num_classes": 5, "image_size": 64, "mean": [0.5] * 3, "std": [0.25] * 3,
           "preprocess": {"medical": True, "cache_size": 64}, "class_names": list(GRADE_NAMES), "head_norm": False,
           "epoch": 1, "stage": 2, "params": {"evaluate": {"referable_grade": 1}, "train": {"channels_last": True,
                                                                                          "rank_weight": 0.0}}}
    meta = CheckpointMeta.from_dict(old, "old.pth")
    assert (meta.head, meta.global_pool, meta.referable_grade, meta.channels_last) == ("classification", "avg", 1, True)
    assert meta.preprocess == PreprocessConfig(cache_size=64)  # settings added since: their defaults
    assert meta.params["train"]["rank_weight"] == 0.0  # params of an earlier version stay as written


@pytest.mark.parametrize("change, match", [
    ({"image_size": None}, r"m.pth: checkpoint meta lacks \['image_size'\]"),
    ({"num_classes": "5"}, r"m.pth: checkpoint meta field 'num_classes' must be an integer >= 2, got '5'"),
    ({"num_classes": True}, r"field 'num_classes' must be an integer"),
    ({"std": [0.5, 0.0, 0.5]}, r"field 'std' must be a non-empty list of positive numbers"),
    ({"head": "softmax"}, r"field 'head' must be one of \['classification', 'regression', 'ordinal'\], got 'softmax'"),
    ({"class_names": ["a", "b"]}, r"field 'class_names' must be 5 names"),
    ({"referable_grade": 5}, r"field 'referable_grade' must be below num_classes \(5\), got 5"),
    ({"channels_last": "yes"}, r"field 'channels_last' must be true or false"),
    ({"preprocess": {"clahe": True, "sharpen": 1}}, r"m.pth: checkpoint preprocessing settings .*'preprocess.sharpen'"),
])
def test_a_missing_or_bad_field_is_named_with_the_file(change, match):
    stored = _meta().to_dict()
    for key, value in change.items():
        if value is None:
            del stored[key]
        else:
            stored[key] = value
    with pytest.raises(CheckpointError, match=match):
        CheckpointMeta.from_dict(stored, "models/m.pth")


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match="not a drgrade checkpoint.*model.pretrained_file"):
        read_meta(tmp_path / "weights.pth")


def _write_raw(path, model, meta: dict) -> None:
    """A checkpoint file as another tool (or a hand edit) might leave it: no checks on the way."""
    torch.save({"format": 1, "meta": meta, "model": model.state_dict(), "train_state": {}}, path)


def test_weights_of_another_architecture_are_a_checkpoint_error_with_the_fix(tmp_path):
    import timm

    _write_raw(tmp_path / "m.pth", timm.create_model("resnet18", num_classes=5),
               _meta(head="classification", global_pool="avg").to_dict())
    with pytest.raises(CheckpointError, match=r"m.pth: the weights do not fit model.name=resnet10t .*missing.*"
                                              r"unexpected.*trained with another model\? Retrain"):
        load_checkpoint(tmp_path / "m.pth")


def test_a_meta_with_fewer_classes_than_the_weights_is_a_checkpoint_error(tmp_path):
    import timm

    meta = _meta(head="classification", global_pool="avg", num_classes=3, class_names=GRADE_NAMES[:3],
                 referable_grade=2)
    _write_raw(tmp_path / "m.pth", timm.create_model("resnet10t", num_classes=5), meta.to_dict())
    with pytest.raises(CheckpointError, match=r"classifier has 5 output\(s\), but the meta describes 3 classes"
                                              r".*re-save the checkpoint with the num_classes"):
        load_checkpoint(tmp_path / "m.pth")


def test_class_names_shorter_than_the_classes_are_refused_on_save_and_load(tmp_path):
    import timm

    model = timm.create_model("resnet10t", num_classes=5)
    short = _meta(head="classification", global_pool="avg", class_names=GRADE_NAMES[:3])
    with pytest.raises(CheckpointError, match=r"'class_names' must be 5 names .*re-save the checkpoint"):
        save_checkpoint(tmp_path / "m.pth", model, short)
    assert not (tmp_path / "m.pth").exists()
    _write_raw(tmp_path / "m.pth", model, short.to_dict())
    with pytest.raises(CheckpointError, match=r"m.pth: .*'class_names' must be 5 names .*one name per class"):
        load_checkpoint(tmp_path / "m.pth")


def test_checkpoints_are_written_through_the_atomic_writer(tmp_path, monkeypatch):
    """Two trainers writing one name never share a temporary file (dr_core.runtime.io.write_atomic)."""
    import timm

    import dr_core.models.checkpoint as checkpoint
    from dr_core.runtime.io import write_atomic

    used = []
    monkeypatch.setattr(checkpoint, "write_atomic", lambda path, write: used.append(path) or write_atomic(path, write))
    save_checkpoint(tmp_path / "m.pth", timm.create_model("resnet10t", num_classes=5),
                    _meta(head="classification", global_pool="avg"))
    assert used == [tmp_path / "m.pth"] and sorted(p.name for p in tmp_path.iterdir()) == ["m.pth"]
