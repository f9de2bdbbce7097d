"""The export stage's work: ONNX file, its check against PyTorch on the test photos, the model card."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dr_core.config import ExportConfig
from dr_core.data.dataset import load_cache
from dr_core.export.card import model_card
from dr_core.export.onnx import check_onnx, export_onnx, handover_metadata
from dr_core.models.checkpoint import load_checkpoint
from dr_core.runtime.io import file_sha256, write_atomic

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The exported model does not reproduce the checkpoint."""


@dataclass(frozen=True)
class HandoverPaths:
    """Inputs (the pipeline's outputs) and outputs of the export stage."""

    checkpoint: Path
    operating_point: Path
    metrics: Path
    split_summary: Path
    cache_dir: Path
    onnx: Path
    check: Path
    card: Path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ExportError(f"{path}: cannot read it ({err}); run `dvc repro` so that the evaluate stage writes it")


def hand_over(paths: HandoverPaths, cfg: ExportConfig) -> dict[str, Any]:
    """Export the checkpoint, check the export on the cached test photos, write the model card.

    Raises:
        ExportError: onnxruntime's grade probabilities differ from PyTorch's by more than ``cfg.atol``.
    """
    model, meta = load_checkpoint(paths.checkpoint)
    point = _read_json(paths.operating_point)
    export_onnx(model, meta, paths.onnx, handover_metadata(meta, point, paths.checkpoint), cfg.opset)
    images, _ = load_cache(paths.cache_dir, "test")
    check = check_onnx(paths.onnx, model, meta, images) | {"atol": cfg.atol, "opset": cfg.opset}
    log.info("ONNX against PyTorch on %d test photos: max |diff| %.2e (tolerance %.0e)",
             check["n_images"], check["max_abs_diff"], cfg.atol)
    if check["max_abs_diff"] > cfg.atol:
        paths.onnx.unlink(missing_ok=True)
        raise ExportError(f"{paths.onnx}: onnxruntime's grade probabilities differ from PyTorch's by up to "
                          f"{check['max_abs_diff']:.2e} on the test photos, more than export.atol ({cfg.atol:g}); "
                          "the export was removed. Try another export.opset, or report the architecture")
    write_atomic(paths.check, lambda p: p.write_text(json.dumps(check, indent=2) + "\n"))
    card = model_card(meta, _read_json(paths.metrics), point, _read_json(paths.split_summary),
                      file_sha256(paths.checkpoint), check)
    write_atomic(paths.card, lambda p: p.write_text(card))
    return check
