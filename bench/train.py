"""Training-speed bench: what our engine saves or costs against plain PyTorch loops, in one run.

Stage 1 (frozen backbone): ``run_epoch`` with the stage-1 ``StepContext`` (backbone in eval mode,
features under ``no_grad``, only the head trains) against a naive loop with ``requires_grad=False``
on the backbone but ``model(x)`` in train mode, on the same pre-made tensor batches. Stage 2 (all
layers train): ``run_epoch`` against a bare forward/backward/clip/step loop, both drawing from one
real DataLoader (in-memory uint8 images, our augmentation): the ratio is what our per-batch
bookkeeping costs. Each pair runs in its own subprocess, its two cases alternating in ABBA rounds
after untimed warm-up batches. images/s: batch size / median batch time on CPU (robust to other
processes), timed batches / total time on CUDA. Peak RSS (``ru_maxrss`` reset per run; main process
only) and CUDA peak memory cover each case's own batches. Nothing asserts on time.
"""
from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from dr_core.data.augment import build_transforms
from dr_core.config import ModelConfig, Params, TrainConfig
from dr_core.data.dataset import ArrayDataset
from dr_core.runtime.device import describe_device, pick_device, seed_everything
from dr_core.training.engine import StepContext, run_epoch
from dr_core.training.losses import build_loss, class_weights
from dr_core.models.backbone import build_model, normalisation
from dr_core.synthetic.demo import render_fundus
from dr_core.training.fit import stage_context

CASES = {"s1_naive": "stage 1, naive frozen (train mode, model(x))",
         "s1_ours": "stage 1, run_epoch (eval backbone, no_grad)",
         "s2_bare": "stage 2, bare loop over the DataLoader",
         "s2_ours": "stage 2, run_epoch over the DataLoader"}
TARGETS = (("stage 1 ours/naive", "s1_ours", "s1_naive", 2.0), ("stage 2 ours/bare", "s2_ours", "s2_bare", 0.95))


class Segment:
    """``n`` batches from a shared stream, timed from the first request to the one after the last.
    ``laps``: time between requests (one per batch); on CUDA only the ends are synchronised."""

    def __init__(self, stream: Iterator, n: int, device: torch.device) -> None:
        self.stream, self.n, self.device = stream, n, device
        self.seconds = 0.0
        self.laps: list[float] = []

    def __len__(self) -> int:
        return self.n

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def __iter__(self) -> Iterator:
        stamps = [self._now()]
        for i in range(self.n):
            if i:
                stamps.append(time.perf_counter())  # batch i requested: batch i - 1 is done (CPU)
            yield next(self.stream)
        stamps.append(self._now())
        self.seconds, self.laps = stamps[-1] - stamps[0], np.diff(stamps).tolist()


def bare_loop(model: nn.Module, loader: Segment, loss_fn: nn.Module, ctx: StepContext,
              optimizer: torch.optim.Optimizer) -> None:
    """A minimal train-mode loop with the optimisation of ``ctx`` (AMP, clipping, schedule)."""
    model.train()
    params, scaler = [p for g in optimizer.param_groups for p in g["params"]], ctx.scaler
    for x, y in loader:
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
        if ctx.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(ctx.device.type, dtype=ctx.autocast_dtype, enabled=ctx.autocast_dtype is not None):
            loss = loss_fn(model(x).float(), y)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if ctx.grad_clip > 0:
            if scaler is not None:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, ctx.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ctx.scheduler.step()


def reset_peaks(device: torch.device) -> bool:
    """Open a case's peak-memory window: CUDA's peak counter and, on Linux, the RSS high-water mark
    behind ru_maxrss (after giving freed heap back, so the other case's pages do not count)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except (OSError, AttributeError):
        return False


def setup(stage: int, args: argparse.Namespace
          ) -> tuple[nn.Module, nn.Module, Iterator, StepContext, torch.optim.Optimizer]:
    """Model, loss, batch stream and the training stage's own StepContext and optimizer."""
    train = replace(TrainConfig(), image_size=args.image_size, batch_size=args.batch_size, mixed_precision=args.amp,
                    channels_last=args.channels_last, num_workers=args.num_workers, device=args.device)
    params = Params(model=ModelConfig(name=args.model, pretrained_file=args.pretrained_file), train=train)
    params.validate()
    device = pick_device(args.device)
    seed_everything(params.seed, deterministic=train.deterministic)
    model = build_model(params.model).to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    mean, std = normalisation(model)
    rng = np.random.default_rng(params.seed)
    distinct = np.stack([render_fundus(i % 5, rng, args.cache_size) for i in range(20)])  # (20, S, S, 3)
    total = 2 * (args.warmup + args.batches)
    n = (4 if stage == 1 else total) * args.batch_size  # stage 1: four pre-made batches, reused
    images, grades = distinct[np.arange(n) % len(distinct)], np.arange(n) % 5  # (n, S, S, 3) uint8 in memory
    loss_fn = build_loss(train.loss, class_weights(grades, params.model.num_classes), train.focal_gamma,
                         train.focal_alpha, train.label_smoothing).to(device)
    level = "none" if stage == 1 else "advanced" if train.advanced_aug else "basic"
    ds = ArrayDataset(images, grades, build_transforms(args.image_size, mean, std, level))
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=stage == 2, drop_last=True,
                        num_workers=args.num_workers if stage == 2 else 0, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(params.seed))
    stream: Iterator = (itertools.cycle(list(loader)) if stage == 1  # pre-made tensors
                        else itertools.chain.from_iterable(itertools.repeat(loader)))  # one worker pool for all runs
    lr = train.lr_stage1 if stage == 1 else train.lr_stage2
    ctx, optimizer = stage_context(model, params, stage, lr, 1, total, device)
    return model, loss_fn, stream, ctx, optimizer


def run_pair(stage: int, args: argparse.Namespace) -> dict[str, Any]:
    """Alternate the pair's two cases over one model and stream; images/s and peak memory of each."""
    model, loss_fn, stream, ctx, optimizer = setup(stage, args)
    ours, base = f"s{stage}_ours", f"s{stage}_{'naive' if stage == 1 else 'bare'}"
    out = {c: {"seconds": 0.0, "laps": [], "rss_mib": 0.0, "cuda_mib": None} for c in (base, ours)}
    rss_resets = True
    chunks = [len(c) for c in np.array_split(np.arange(args.batches), args.rounds) if len(c)]
    for r, n in enumerate([args.warmup] + chunks):  # round 0 is the untimed warm-up
        for case in ((base, ours) if r % 2 else (ours, base)):  # ABBA: a steady drift cancels
            seg = Segment(stream, n, ctx.device)
            rss_resets &= reset_peaks(ctx.device)
            if case == ours:
                run_epoch(model, seg, loss_fn, ctx, optimizer, desc=case)
            else:
                bare_loop(model, seg, loss_fn, ctx, optimizer)
            o = out[case]
            if r > 0:
                o["seconds"] += seg.seconds
                o["laps"] += seg.laps
            o["rss_mib"] = max(o["rss_mib"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB
            if ctx.device.type == "cuda":
                o["cuda_mib"] = max(o["cuda_mib"] or 0.0, torch.cuda.max_memory_allocated(ctx.device) / 2**20)
    for o in out.values():  # CPU: median batch, robust to outside load; CUDA: total over the timed batches
        seconds, laps = o.pop("seconds"), o.pop("laps")
        o["images_per_s"] = args.batch_size / (float(np.median(laps)) if ctx.device.type == "cpu"
                                               else seconds / args.batches)
    return {"device": describe_device(ctx.device), "amp": str(ctx.autocast_dtype), "rss_resets": rss_resets,
            "cases": out}


def report(pairs: list[dict[str, Any]], args: argparse.Namespace, loads: list[float]) -> None:
    """Print the table and one ratio line per target."""
    res = {c: r for p in pairs for c, r in p["cases"].items()}
    print(f"device: {pairs[0]['device']}; torch {torch.__version__}; autocast: {pairs[0]['amp']}; "
          f"channels_last: {args.channels_last}")
    print(f"model {args.model} ({args.pretrained_file or 'timm hub'}), {args.image_size} px, batch {args.batch_size}, "
          f"{args.warmup} warm-up + {args.batches} timed batches per case in {args.rounds} rounds, "
          f"{args.num_workers} loader workers; load average {loads[0]:.2f} before, {loads[1]:.2f} after"
          + ("" if all(p["rss_resets"] for p in pairs) else "; RSS peaks cumulative (no clear_refs)"))
    print(f"{'case':<9} {'what':<46} {'img/s':>8} {'peak RSS MiB':>13} {'CUDA MiB':>9}")
    for case, what in CASES.items():
        r = res[case]
        cuda = f"{r['cuda_mib']:.0f}" if r["cuda_mib"] is not None else "-"
        print(f"{case:<9} {what:<46} {r['images_per_s']:>8.2f} {r['rss_mib']:>13.0f} {cuda:>9}")
    for name, ours, base, target in TARGETS:
        ratio = res[ours]["images_per_s"] / res[base]["images_per_s"]
        print(f"ratio {name}: {ratio:.2f}x (target >= {target:.2f}x) {'PASS' if ratio >= target else 'MISS'}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--model", default="tf_efficientnet_lite0")
    p.add_argument("--pretrained-file", default="builtin", help='"builtin", a weights file, or "" (timm hub)')
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--cache-size", type=int, default=256, help="side of the cached uint8 images")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, help="timed batches per case (default: 6 on CPU, 100 on CUDA)")
    p.add_argument("--rounds", type=int, default=2, help="alternations of a pair's two cases (even)")
    p.add_argument("--warmup", type=int, help="untimed batches per case (default: 2 on CPU, 10 on CUDA)")
    p.add_argument("--num-workers", type=int, default=TrainConfig().num_workers)
    p.add_argument("--amp", action="store_true", help="fp16 autocast + GradScaler on CUDA (no effect on CPU)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--pair", type=int, choices=(1, 2), help=argparse.SUPPRESS)  # internal: run one pair
    args = p.parse_args()
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    args.batches = args.batches or (100 if cuda else 6)
    args.warmup = (10 if cuda else 2) if args.warmup is None else args.warmup
    return args


def main() -> None:
    args = parse_args()
    if args.pair:
        print(json.dumps(run_pair(args.pair, args)))
        return
    loads, pairs = [os.getloadavg()[0]], []
    for stage in (1, 2):  # a fresh interpreter per pair: its own peak memory and CUDA context
        print(f"running stage {stage} pair ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, __file__, "--pair", str(stage), *sys.argv[1:]],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"bench/train.py: stage {stage} pair failed with exit code {proc.returncode}")
        pairs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    loads.append(os.getloadavg()[0])
    report(pairs, args, loads)


if __name__ == "__main__":
    main()
