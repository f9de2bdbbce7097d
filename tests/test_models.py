import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from dr_core.config import GRADE_NAMES, ModelConfig, PreprocessConfig
from dr_core.models.backbone import (WeightsError, build_model, builtin_state_dict, early_parameter_names,
                            freeze_early_layers, frozen_modules_to_eval, normalisation)

EGYPTIAN_CAT, TABBY, TIGER_CAT = 285, 281, 282


@pytest.mark.parametrize("arch, side", [("tf_efficientnet_lite0", 224), ("tf_efficientnet_lite1", 240),
                                        ("tf_efficientnet_lite2", 260)])
def test_builtin_weights_classify_a_cat_photo(arch, side):
    skdata = pytest.importorskip("skimage.data")
    model = build_model(ModelConfig(name=arch, num_classes=1000, pretrained_file="builtin", drop_rate=0,
                                    drop_path_rate=0))
    mean, std = normalisation(model)
    assert mean == (0.5, 0.5, 0.5) and std == (0.5, 0.5, 0.5)
    image = cv2.resize(skdata.chelsea(), (side, side), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    x = torch.from_numpy(((image - np.array(mean)) / np.array(std)).transpose(2, 0, 1)).float()[None]
    with torch.no_grad():
        top = model.eval()(x).softmax(-1)[0]
    assert int(top.argmax()) in (EGYPTIAN_CAT, TABBY, TIGER_CAT)
    assert float(top[[EGYPTIAN_CAT, TABBY, TIGER_CAT]].sum()) > 0.5


@pytest.mark.parametrize("arch", ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_builtin_mapping_covers_every_tensor(arch):
    mapped = builtin_state_dict(arch)
    own = timm.create_model(arch).state_dict()
    assert list(mapped) == list(own)
    assert all(mapped[k].shape == own[k].shape for k in own)


def test_builtin_weights_get_a_new_head():
    model = build_model(ModelConfig(num_classes=5, pretrained_file="builtin"))
    assert model.get_classifier().out_features == 5
    ref = builtin_state_dict()
    assert torch.equal(model.state_dict()["conv_stem.weight"], ref["conv_stem.weight"])


@pytest.mark.parametrize("pool, width", [("avg", 1280), ("avgmax", 1280), ("gem", 1280)])
def test_global_pool_reaches_the_head_and_survives_a_checkpoint(tmp_path, pool, width):
    from dr_core.models.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint

    model = build_model(ModelConfig(pretrained_file="builtin", global_pool=pool), outputs=1).eval()
    assert model.get_classifier().in_features == width
    x = torch.rand(2, 3, 96, 96)
    feats = model.forward_features(x)
    expected = {"avg": feats.mean((2, 3)), "avgmax": 0.5 * (feats.mean((2, 3)) + feats.amax((2, 3))),
                "gem": feats.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3)}[pool]
    with torch.no_grad():
        assert torch.allclose(model(x), model.get_classifier()(expected), atol=1e-5)
    meta = CheckpointMeta(model_name="tf_efficientnet_lite0", num_classes=5, head="regression", global_pool=pool,
                          image_size=96, mean=(0.5,) * 3, std=(0.5,) * 3, preprocess=PreprocessConfig(),
                          class_names=GRADE_NAMES)
    save_checkpoint(tmp_path / "m.pth", model, meta)
    loaded, _ = load_checkpoint(tmp_path / "m.pth")
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)


def test_gem_keeps_the_pretrained_backbone_and_learns_its_power(tmp_path):
    from dr_core.models.backbone import GeM
    from dr_core.models.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint

    model = build_model(ModelConfig(pretrained_file="builtin", global_pool="gem"), outputs=1)
    assert isinstance(model.global_pool, GeM)
    assert torch.equal(model.state_dict()["conv_stem.weight"], builtin_state_dict()["conv_stem.weight"])
    # between the average and the maximum of each map
    feats = torch.rand(2, 4, 5, 5)
    pooled = model.global_pool(feats)
    assert (pooled > feats.mean((2, 3))).all() and (pooled < feats.amax((2, 3))).all()
    # p gets a gradient and a checkpoint keeps its trained value
    model(torch.rand(2, 3, 64, 64)).sum().backward()
    assert model.global_pool.p.grad is not None and model.global_pool.p.grad != 0
    with torch.no_grad():
        model.global_pool.p.fill_(4.5)
    meta = CheckpointMeta(model_name="tf_efficientnet_lite0", num_classes=5, head="regression", global_pool="gem",
                          image_size=64, mean=(0.5,) * 3, std=(0.5,) * 3, preprocess=PreprocessConfig(),
                          class_names=GRADE_NAMES)
    save_checkpoint(tmp_path / "m.pth", model, meta)
    loaded, _ = load_checkpoint(tmp_path / "m.pth")
    assert loaded.global_pool.p.item() == 4.5


def test_gem_refuses_a_model_without_timm_pooling():
    from dr_core.models.backbone import attach_gem

    with pytest.raises(ValueError, match="model.global_pool=gem: .*use avg"):
        attach_gem(torch.nn.Linear(2, 2))


def test_builtin_refuses_another_architecture():
    with pytest.raises(WeightsError, match="model.name is 'resnet18'"):
        build_model(ModelConfig(name="resnet18", pretrained_file="builtin"))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file(tmp_path, suffix):
    source = timm.create_model("resnet10t", num_classes=1000)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(source.state_dict(), str(path))
    else:
        torch.save({"state_dict": source.state_dict()}, path)
    model = build_model(ModelConfig(name="resnet10t", num_classes=5, pretrained_file=str(path)))
    assert torch.equal(model.state_dict()["conv1.0.weight"], source.state_dict()["conv1.0.weight"])


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(timm.create_model("resnet10t").state_dict(), str(path))
    with pytest.raises(WeightsError, match="another architecture|have no weights"):
        build_model(ModelConfig(name="resnet18", pretrained_file=str(path)))


def test_missing_weights_file():
    with pytest.raises(WeightsError, match="does not exist"):
        build_model(ModelConfig(name="resnet10t", pretrained_file="/nonexistent/w.pth"))


def test_hub_download_offline_says_how_to_use_a_local_file():
    code = ("from dr_core.models.backbone import build_model; from dr_core.config import ModelConfig\n"
            "build_model(ModelConfig(name='resnet10t', pretrained=True, pretrained_file=''))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode != 0
    assert "WeightsError" in out.stderr and "model.pretrained_file" in out.stderr


def test_new_head_starts_uncommitted():
    """A fresh 5-grade head must not start with near-one-hot outputs (timm's 1000-class init does)."""
    model = build_model(ModelConfig(num_classes=5, pretrained_file="builtin")).eval()
    with torch.no_grad():
        probs = model(torch.randn(4, 3, 96, 96) * 0.5).softmax(-1)
    assert float(probs.max()) < 0.5


@pytest.mark.parametrize("name, stride, first, last", [
    ("tf_efficientnet_lite0", 8, "conv_stem.weight", "blocks.2.1.bn3.bias"),
    ("resnet18", 4, "conv1.weight", "layer1.1.bn2.bias"),
])
def test_early_parameters_end_at_the_requested_stride(name, stride, first, last):
    model = timm.create_model(name, num_classes=5)
    names = early_parameter_names(model, stride)
    assert names[0] == first and names[-1] == last
    assert not any(n.startswith(("fc.", "classifier.")) for n in names)


def test_freeze_stride_without_features_at_that_stride_names_the_choices():
    model = timm.create_model("convnext_atto", num_classes=5)  # strides 4..32, none at 2
    with pytest.raises(ValueError, match=r"freeze_stride=2.*\[4, 8, 16, 32\]"):
        early_parameter_names(model, 2)


def test_frozen_layers_stay_in_eval_mode():
    model = timm.create_model("resnet18", num_classes=5)
    assert freeze_early_layers(model, 4) > 0
    model.train()
    frozen_modules_to_eval(model)
    assert not model.layer1.training and not model.bn1.training
    assert model.layer2.training and model.fc.training


@pytest.mark.parametrize("removed, option", [({"head_norm": True}, "model.head_norm=true"),
                                             ({"global_pool": "catavgmax"}, "model.global_pool=catavgmax")])
def test_a_checkpoint_of_a_removed_option_says_to_retrain(tmp_path, removed, option):
    from dr_core.models.checkpoint import CheckpointError, load_checkpoint

    meta = {"model_name": "resnet10t", "num_classes": 5, "head": "classification", "global_pool": "avg",
            "head_norm": False, "image_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3, "preprocess": {},
            "class_names": ["No DR", "Mild", "Moderate", "Severe", "Proliferative"], **removed}
    # as an older version wrote it: a plain dict, torch.save without the atomic rename
    torch.save({"format": 1, "meta": meta, "model": {}, "train_state": {}}, tmp_path / "old.pth")
    with pytest.raises(CheckpointError, match=rf"old.pth: trained with {option}.*retrain"):
        load_checkpoint(tmp_path / "old.pth")
