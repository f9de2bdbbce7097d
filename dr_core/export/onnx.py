"""Export a checkpoint to ONNX, with its input pipeline and operating point in the file's metadata.

The exported graph maps a normalised batch (B, 3, S, S) to grade probabilities (B, K): the head's own
conversion (softmax, regression or ordinal) is part of it, so a consumer needs no drgrade code. What
must happen before (the checkpoint's preprocessing, resize, normalisation) and after (the referable
threshold and grade cut-points chosen on val) travels as metadata, tied to the checkpoint by digest.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dr_core.evaluation.inference import predict_probs
from dr_core.models.checkpoint import CheckpointMeta
from dr_core.models.heads import to_probs
from dr_core.runtime.io import file_sha256

log = logging.getLogger(__name__)


class GradeProbabilities(nn.Module):
    """The model followed by its head's conversion to grade probabilities (B, K)."""

    def __init__(self, model: nn.Module, head: str, num_classes: int) -> None:
        super().__init__()
        self.model, self.head, self.num_classes = model, head, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_probs(self.head, self.model(x), self.num_classes)


def handover_metadata(meta: CheckpointMeta, point: dict[str, Any], checkpoint: Path) -> dict[str, str]:
    """Everything a consumer needs around the graph, as the string pairs ONNX metadata holds."""
    return {
        "drgrade.checkpoint_sha256": file_sha256(checkpoint),
        "drgrade.model_name": meta.model_name,
        "drgrade.input": json.dumps({"layout": "NCHW", "size": meta.image_size, "mean": list(meta.mean),
                                     "std": list(meta.std), "range": "RGB scaled to 0..1, then (x - mean) / std"}),
        "drgrade.preprocess": json.dumps(meta.to_dict()["preprocess"]),
        "drgrade.class_names": json.dumps(list(meta.class_names)),
        "drgrade.referral": json.dumps({
            "rule": f"refer when P(grade >= {meta.referable_grade}) >= threshold",
            "referable_grade": meta.referable_grade, "threshold": point["threshold"],
            "grade_cutpoints": point.get("grade_cutpoints"), "chosen_on": "validation split",
            "target_sensitivity": point.get("target_sensitivity"), "mode": point.get("mode"),
            "fellow_eye_weight": point.get("fellow_eye_weight", 0.0)}),
    }


def export_onnx(model: nn.Module, meta: CheckpointMeta, path: Path, metadata: dict[str, str],
                opset: int = 17) -> None:
    """Write ``model`` (wrapped by :class:`GradeProbabilities`) to ``path`` with a dynamic batch axis."""
    import onnx

    wrapped = GradeProbabilities(model.float().eval(), meta.head, meta.num_classes).eval()
    dummy = torch.zeros(1, 3, meta.image_size, meta.image_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    torch.onnx.export(wrapped, (dummy,), str(tmp), input_names=["image"], output_names=["grade_probabilities"],
                      dynamic_axes={"image": {0: "batch"}, "grade_probabilities": {0: "batch"}},
                      opset_version=opset, dynamo=False)
    graph = onnx.load(str(tmp))
    onnx.checker.check_model(graph)
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(tmp))
    tmp.replace(path)


def check_onnx(path: Path, model: nn.Module, meta: CheckpointMeta, images: np.ndarray,
               batch_size: int = 32) -> dict[str, Any]:
    """Grade probabilities from onnxruntime against PyTorch on the same cached photos (N, S, S, 3)."""
    import onnxruntime as ort

    from dr_core.data.augment import build_transforms
    from dr_core.data.dataset import ArrayDataset

    expected = predict_probs(model, images, meta, batch_size=batch_size)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dataset = ArrayDataset(images, None, build_transforms(meta.image_size, meta.mean, meta.std, "none"))
    got = []
    for start in range(0, len(dataset), batch_size):
        batch = np.stack([dataset[i][0].numpy() for i in range(start, min(start + batch_size, len(dataset)))])
        got.append(session.run(["grade_probabilities"], {"image": batch.astype(np.float32)})[0])
    got_all = np.concatenate(got) if got else np.zeros_like(expected)
    diff = np.abs(got_all - expected)
    return {"n_images": len(images), "max_abs_diff": float(diff.max()) if diff.size else 0.0,
            "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
            "same_argmax": float((got_all.argmax(1) == expected.argmax(1)).mean()) if diff.size else 1.0}
