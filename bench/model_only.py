"""Model-only training rate: the train stage's model, batch, precision and optimiser on one device, fed one
batch that already sits on the device (no decoding, no augmentation, no host-to-device copy).

It is the ceiling for the train stage's own rate (the ``train ... images/s`` line that the train stage logs
per epoch): their ratio says how much the data pipeline costs. ``bench/gpu_session.sh`` runs both on one
GPU with the same params.yaml.

    python bench/model_only.py --params params.yaml --steps 40 --warmup 10   # prints one JSON line

The weights are random (the rate does not depend on them), so no weight file is needed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from dr_core.config import load_params
from dr_core.models.backbone import build_model
from dr_core.models.heads import head_for_loss, num_outputs
from dr_core.runtime.device import describe_device, pick_device, seed_everything
from dr_core.training.engine import run_epoch
from dr_core.training.fit import stage_context
from dr_core.training.losses import build_loss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--steps", type=int, default=40, help="timed optimiser steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (cuDNN autotuning, allocator)")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=2, help="1: frozen backbone; 2: fine-tuning")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    params = dataclasses.replace(params, model=dataclasses.replace(params.model, pretrained=False, pretrained_file=""))
    t = params.train
    seed_everything(params.seed, deterministic=t.deterministic)
    device = pick_device(t.device)
    head = head_for_loss(t.loss)
    model = build_model(params.model, num_outputs(head, params.model.num_classes)).to(device)
    if t.channels_last:
        model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(t.loss, torch.ones(params.model.num_classes), t.focal_gamma, t.focal_alpha,
                         t.label_smoothing, t.regression_loss).to(device)
    x = torch.randn(t.batch_size, 3, t.image_size, t.image_size, device=device)
    y = torch.randint(0, params.model.num_classes, (t.batch_size,), device=device)
    rates = []
    for n in (args.warmup, args.steps):
        batches = [(x, y)] * n
        ctx, optimizer = stage_context(model, params, args.stage, t.lr_stage2, 1, n, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run_epoch(model, batches, loss_fn, ctx, optimizer, f"model-only stage {args.stage}")  # reads the loss at the end
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(n * t.batch_size / (time.perf_counter() - start))
    print(json.dumps({"device": describe_device(device), "model": params.model.name, "image_size": t.image_size,
                      "batch_size": t.batch_size, "channels_last": t.channels_last,
                      "autocast": str(ctx.autocast_dtype), "stage": args.stage, "steps": args.steps,
                      "images_per_s": round(rates[-1], 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
