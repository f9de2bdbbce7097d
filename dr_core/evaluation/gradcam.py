"""Grad-CAM heat maps for timm CNNs, and overlays a grader can look at.

The target is the last convolutional feature map, i.e. what ``forward_features`` returns
(EfficientNet: ``bn2`` after ``conv_head``; ResNet: ``layer4``). A forward hook on the module
that produces it records the activations and their gradient with respect to the chosen
class logit; the heat map is ``relu(sum_c mean(grad_c) * activation_c)``.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn


class GradCamError(ValueError):
    """The model has no spatial feature map Grad-CAM can use."""


@torch.no_grad()
def feature_module(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The module whose output is exactly the tensor ``model.forward_features(example)`` returns.

    Found by tracing one forward pass, so it needs no per-architecture table: EfficientNet
    gives ``bn2``, ResNet ``layer4``; any timm CNN with ``forward_features`` works.
    """
    if not hasattr(model, "forward_features"):
        raise GradCamError(f"{type(model).__name__} has no forward_features (not a timm model?); "
                           "pass target_module= explicitly")
    outputs: list[tuple[nn.Module, torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda mod, _i, out: outputs.append((mod, out)))
               for m in model.modules() if m is not model]
    try:
        result = model.forward_features(example[:1])
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(result, torch.Tensor) or result.ndim != 4:
        shape = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__
        raise GradCamError(f"{type(model).__name__}.forward_features returns {shape}; Grad-CAM needs a "
                           "(B, C, h, w) convolutional feature map (vision transformers are not supported)")
    # a parent finishes after its children, so the last match is the outermost such module
    producers = [mod for mod, out in outputs if out is result]
    if not producers:
        raise GradCamError(f"{type(model).__name__}: no submodule returns the forward_features map; "
                           "pass target_module= explicitly")
    return producers[-1]


def grad_cam(model: nn.Module, x: torch.Tensor, target: int | list[int] | None = None,
             target_module: nn.Module | None = None, head: str = "classification",
             num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps for a batch.

    Args:
        model: a classifier in eval mode.
        x: normalised input ``(B, 3, H, W)``.
        target: class per image (or one for all); ``None`` explains the predicted class.
        target_module: module producing the feature map; default :func:`feature_module`.

    Returns:
        maps ``(B, H, W)`` float32 in [0, 1] at input resolution (all zeros where no positive
        evidence was found), and the softmax probabilities ``(B, K)``.
    """
    module = target_module if target_module is not None else feature_module(model, x)
    store: dict[str, torch.Tensor] = {}

    def keep(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        store["features"] = output

    handle = module.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(x)
            features = store.get("features")
            if features is None or features.ndim != 4:
                shape = None if features is None else tuple(features.shape)
                raise GradCamError(f"{type(module).__name__} output has shape {shape}; Grad-CAM needs "
                                   "a (B, C, h, w) convolutional feature map")
            if head != "classification":
                # regression: the predicted grade; ordinal: the summed cumulative logits. Both grow
                # with severity, so the map shows what pushes the grade up.
                classes = None
            elif target is None:
                classes = logits.argmax(dim=1)
            else:
                classes = torch.as_tensor(target, device=logits.device).long().expand(len(x))
            chosen = logits.sum() if classes is None else logits.gather(1, classes[:, None]).sum()
            (grads,) = torch.autograd.grad(chosen, features)
    finally:
        handle.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    cam = torch.relu((weights * features).sum(dim=1, keepdim=True)).detach()  # (B, 1, h, w)
    cam = torch.nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    cam = cam[:, 0]
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    maps = (cam / peak).float().cpu().numpy()
    from dr_core.models.heads import to_probs

    k = num_classes if num_classes is not None else logits.shape[1]
    return maps, to_probs(head, logits.detach(), k).cpu().numpy()


def overlay_heatmap(rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend a [0, 1] map (any size) over an RGB uint8 image in the JET colour map."""
    cam = cv2.resize(cam.astype(np.float32), (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(np.uint8(np.clip(cam, 0, 1) * 255), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(rgb, 1.0 - alpha, heat, alpha, 0.0)


def side_by_side(rgb: np.ndarray, cam: np.ndarray, caption: str, alpha: float = 0.4) -> np.ndarray:
    """The preprocessed photo and its overlay next to each other, over a one-line caption."""
    overlay = overlay_heatmap(rgb, cam, alpha)
    panel = np.concatenate([rgb, overlay], axis=1)
    strip = np.full((28, panel.shape[1], 3), 255, np.uint8)
    scale = 0.5 if panel.shape[1] >= 400 else 0.35
    cv2.putText(strip, caption, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([panel, strip], axis=0)
