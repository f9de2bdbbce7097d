"""What ``train.deterministic`` costs per training step, and what the NaN fill of new tensors adds.

``torch.use_deterministic_algorithms(True)`` also sets
``torch.utils.deterministic.fill_uninitialized_memory``: every tensor torch allocates is filled
with NaN first, so that code reading memory it never wrote shows up. ``seed_everything`` turns that
fill off and keeps the deterministic kernels. Three cases, each timed in its own process (as
training is), alternating in rounds, after an untimed warm-up step:

  nondeterministic          torch's defaults
  deterministic + NaN fill  torch's deterministic mode as it comes
  deterministic             what training uses (fill off)

Reported: images/s from the median step and the ratio to the first case. Then the check behind
turning the fill off: the same two seeded steps, with and without the fill, give bit-identical
losses and weights. Nothing asserts on time.

    .venv/bin/python bench/determinism.py                 # the real-cpu preset's step: Lite0, 448 px
    .venv/bin/python bench/determinism.py --size 224 --freeze-stride 0
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time

import torch

from dr_core.config import ModelConfig
from dr_core.models.backbone import build_model, freeze_early_layers, frozen_modules_to_eval

CASES = {  # name: (use_deterministic_algorithms, fill_uninitialized_memory)
    "nondeterministic": (False, True),
    "deterministic + NaN fill": (True, True),
    "deterministic (training)": (True, False),
}


def set_mode(deterministic: bool, fill: bool) -> None:
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = fill


def make_model(name: str, stride: int) -> torch.nn.Module:
    model = build_model(ModelConfig(name=name, pretrained=False, num_classes=1))
    freeze_early_layers(model, stride)
    model.train()
    frozen_modules_to_eval(model)
    return model.to(memory_format=torch.channels_last)


def make_step(model: torch.nn.Module, x: torch.Tensor):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = model(x).float().pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as training (train.grad_clip)
        opt.step()
        return loss.item()

    return step


def seeded_run(base: torch.nn.Module, x: torch.Tensor, fill: bool, steps: int = 2) -> tuple[list[float], dict]:
    set_mode(True, fill)
    torch.manual_seed(1)  # drop-path masks
    model = copy.deepcopy(base)
    step = make_step(model, x)
    losses = [step() for _ in range(steps)]
    return losses, {k: v.clone() for k, v in model.state_dict().items()}


def time_case(args: argparse.Namespace, name: str) -> list[float]:
    """Step times of one case in this process. One process per case, as training is one process:
    timed side by side in one process, the cases disturbed each other's figures."""
    set_mode(*CASES[name])
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    step = make_step(make_model(args.model, args.freeze_stride), x)
    step()  # warm-up: oneDNN primitive cache
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tf_efficientnet_lite0")
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--freeze-stride", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per process")
    ap.add_argument("--rounds", type=int, default=2, help="processes per case (alternating)")
    ap.add_argument("--case", choices=tuple(CASES), help=argparse.SUPPRESS)  # internal: time one case
    args = ap.parse_args()
    if args.case:
        print(json.dumps(time_case(args, args.case)))
        return

    times: dict[str, list[float]] = {name: [] for name in CASES}
    passthrough = [f"--model={args.model}", f"--size={args.size}", f"--batch={args.batch}",
                   f"--freeze-stride={args.freeze_stride}", f"--steps={args.steps}"]
    for _ in range(args.rounds):
        for name in CASES:
            out = subprocess.run([sys.executable, __file__, *passthrough, f"--case={name}"], check=True,
                                 capture_output=True, text=True).stdout
            times[name] += json.loads(out.strip().splitlines()[-1])

    print(f"{args.model}, {args.size} px, batch {args.batch}, freeze_stride {args.freeze_stride}, channels_last, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} x {args.steps} steps")
    print(f"{'case':28s} {'s/step':>7s} {'img/s':>7s} {'vs first':>9s}")
    first = statistics.median(times[next(iter(CASES))])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:28s} {med:7.2f} {args.batch / med:7.1f} {first / med:8.2f}x")

    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    base = make_model(args.model, args.freeze_stride)
    losses_fill, state_fill = seeded_run(base, x, fill=True)
    losses_nofill, state_nofill = seeded_run(base, x, fill=False)
    same = losses_fill == losses_nofill and all(torch.equal(state_fill[k], state_nofill[k]) for k in state_fill)
    print(f"deterministic, with and without the NaN fill: losses {losses_fill} vs {losses_nofill}; "
          f"weights after the steps {'bit-identical' if same else 'DIFFER'}")


if __name__ == "__main__":
    main()
