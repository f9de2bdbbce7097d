"""Stage-2 step speed: what ``train.freeze_stride`` and ``train.channels_last`` buy, in one run.

Each case builds the model as training does (``build_model``, ``freeze_early_layers``), then times
full optimiser steps (forward, backward, AdamW) on one random batch, alternating the cases in rounds
after an untimed warm-up step. Reported: images/s from the median step and the ratio to the first
case (everything trained, NCHW) measured in the same run. Nothing asserts on time.

    .venv/bin/python bench/freeze.py                    # Lite0, 384 px, batch 16
    .venv/bin/python bench/freeze.py --size 448 --rounds 5
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from dr_core.config import ModelConfig
from dr_core.models.backbone import build_model, freeze_early_layers, frozen_modules_to_eval

CASES = ((0, False), (4, False), (8, False), (0, True), (8, True))  # (freeze_stride, channels_last)


def make_case(name: str, stride: int, channels_last: bool, size: int, batch: int):
    model = build_model(ModelConfig(name=name, pretrained=False))
    freeze_early_layers(model, stride)
    model.train()
    frozen_modules_to_eval(model)
    x = torch.randn(batch, 3, size, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> float:
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model(x).float().pow(2).mean().backward()
        opt.step()
        return time.perf_counter() - start

    step()  # warm-up: allocator, oneDNN primitive cache
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tf_efficientnet_lite0")
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="timed steps per case (alternating)")
    args = ap.parse_args()
    torch.manual_seed(0)
    steps = {case: make_case(args.model, *case, args.size, args.batch) for case in CASES}
    times: dict[tuple[int, bool], list[float]] = {case: [] for case in CASES}
    for _ in range(args.rounds):
        for case, step in steps.items():
            times[case].append(step())
    print(f"{args.model}, {args.size} px, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} steps per case")
    print("| freeze_stride | channels_last | img/s | vs all trained, NCHW |")
    print("|---|---|---|---|")
    base = statistics.median(times[CASES[0]])
    for (stride, cl), ts in times.items():
        med = statistics.median(ts)
        print(f"| {stride} | {str(cl).lower()} | {args.batch / med:.2f} | {base / med:.2f}x |")


if __name__ == "__main__":
    main()
