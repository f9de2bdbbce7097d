"""Device choice, precision and seeding."""
from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

log = logging.getLogger(__name__)


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA GPU is visible; set train.device=auto or cpu")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    """One line for the log: GPU name and memory, or CPU threads."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"cuda:{device.index or 0} {props.name}, {props.total_memory / 2**30:.1f} GiB"
    return f"cpu, {torch.get_num_threads()} threads ({os.cpu_count()} cores)"


def autocast_dtype(device: torch.device, mixed_precision: bool, amp_dtype: str) -> torch.dtype | None:
    """The autocast dtype, or None for full precision.

    On CUDA ``auto`` means fp16 with a gradient scaler; on CPU only an explicit ``bf16`` enables
    autocast, since CPU fp16 is slow and CPU bf16 pays off only on recent processors.
    """
    if not mixed_precision:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if amp_dtype == "bf16" else torch.float16
    if amp_dtype == "bf16":
        return torch.bfloat16
    if amp_dtype == "fp16":
        log.warning("train.amp_dtype=fp16 is not supported on CPU; training in float32")
    return None


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic mode also fills every new tensor with NaN to expose reads of uninitialised
        # memory: about 1000 fills per Lite0 step, a third of the real-cpu preset's training time
        # (bench/determinism.py, bench/README.md). The kernels, and so the results, stay the same.
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
