"""Ablation on real photographs: one factor at a time around a preset, over several seeds.

Each (variant, seed) is a queued DVC experiment named ``abl-<variant>-s<seed>``; ``seed`` changes
the patient-level split as well as initialisation and augmentation, so the spread over seeds is
the spread over held-out patient sets. With ``--folds K`` each (variant, seed) is one experiment of
the cross-validation pipeline ``cv/dvc.yaml`` with ``cv.folds: [0, ..., K-1]``, named
``abl-<variant>-s<seed>-cv<K>``: every photo is tested once, by the fold model that never saw its
patient, and the table shows the pooled out-of-fold figures of ``cv/metrics.json``. The table is
rendered from ``dvc exp show --json``.

    python -m research.ablation all -j 2                  # queue, run, print the markdown table
    python -m research.ablation queue --seeds 1 2 3       # or step by step
    python -m research.ablation all --seeds 42 --folds 5 --variants preset focal   # cross-validated
    python -m research.ablation run -j 2
    python -m research.ablation table --out docs/ablation.md
    python -m research.ablation table --exp-json saved_exp_show.json   # from a saved `dvc exp show --json`
"""
from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dr_core.config import fold_params, params_from_dict
from dr_core.config.presets import merged, read_preset, to_set_args, unflatten

# name -> (overrides on top of the preset, what it tests)
VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "preset": ({}, "the preset as it is"),
    "ce": ({"train.loss": "ce"}, "cross-entropy head instead of regression"),
    "weighted_ce": ({"train.loss": "weighted_ce"}, "class-weighted cross-entropy"),
    "focal": ({"train.loss": "focal"}, "focal loss, gamma 2"),
    "ordinal": ({"train.loss": "ordinal"}, "ordinal head (K-1 cumulative logits)"),
    "one_stage": ({"train.two_stage": False}, "one stage: all layers from the first epoch"),
    "no_clahe": ({"preprocess.clahe": False}, "preprocessing: border crop only, no CLAHE"),
    "ben": ({"preprocess.clahe": False, "preprocess.ben_graham": True, "preprocess.circular_mask": True},
            "preprocessing: Ben Graham + circular crop instead of CLAHE"),
    "224px": ({"train.image_size": 224}, "224 px input instead of 448, same epochs"),
    "384px": ({"train.image_size": 384}, "384 px input instead of 448, same epochs"),
    "512px": ({"preprocess.cache_size": 512, "train.image_size": 512},
              "512 px cache and input instead of 448, same epochs (1.6x the CPU time)"),
    "384px_11ep": ({"train.image_size": 384, "train.epochs_stage2": 11},
                   "384 px, 11 stage-2 epochs (about the same CPU time)"),
    "no_freeze": ({"train.freeze_stride": 0}, "stage 2 trains the early layers too (about 2x slower)"),
    "val_qwk_epoch": ({"train.monitor": "val/qwk"}, "keep the epoch with the best val QWK, not the last"),
    "ema": ({"train.ema": True, "train.ema_decay": 0.98}, "EMA of the weights (decay 0.98)"),
    "balanced": ({"train.balanced_sampler": True}, "class-balanced sampling"),
    "tta": ({"evaluate.tta": True}, "8-view test-time augmentation"),
    "no_fellow_eye": ({"evaluate.fellow_eye_weight": 0.0}, "referable score of each eye alone, no fellow-eye blend"),
    # candidates for the preset itself (same CPU time unless stated)
    "lr_1e-3": ({"train.lr_stage2": 0.001}, "stage-2 learning rate 1e-3 instead of 5e-4"),
    "mse": ({"train.regression_loss": "mse"}, "regression head with MSE instead of smooth-L1"),
    "basic_aug": ({"train.advanced_aug": False}, "flips, rotation and brightness only"),
    "strong_aug": ({"train.aug_strength": 2.0}, "augmentation ranges and probabilities x2"),
    "mixup": ({"train.mixup_alpha": 0.4}, "mixup of training images and losses, alpha 0.4"),
    "gem": ({"model.global_pool": "gem"},
            "generalised-mean pooling (p = 3, learned) instead of the average: between average and max"),
    "no_dropout": ({"model.drop_rate": 0.0, "model.drop_path_rate": 0.0},
                   "no dropout before the head and no drop-path (0.2 and 0.1 in the preset)"),
    "batch_8": ({"train.batch_size": 8}, "batch 8 instead of 16: twice the optimiser steps, same epochs"),
    "wd_0.05": ({"train.weight_decay": 0.05}, "AdamW weight decay 0.05 instead of 1e-4"),
    "backbone_lr_0.3": ({"train.backbone_lr_mult": 0.3}, "stage-2 backbone learning rate x0.3"),
    "freeze_16": ({"train.freeze_stride": 16}, "stage 2 keeps blocks up to stride 16 frozen (faster)"),
    "12ep": ({"train.epochs_stage2": 12}, "12 stage-2 epochs instead of 8 (1.5x the CPU time)"),
    "lite1_384": ({"model.name": "tf_efficientnet_lite1", "train.image_size": 384},
                  "built-in EfficientNet-Lite1 at 384 px (about the same FLOPs)"),
    "lite2_352": ({"model.name": "tf_efficientnet_lite2", "train.image_size": 352},
                  "built-in EfficientNet-Lite2 at 352 px (about the same FLOPs)"),
}
NAME = re.compile(r"^abl-(?P<variant>.+)-s(?P<seed>\d+)(?:-cv(?P<folds>\d+))?$")
METRICS = "results/headline.json"  # the DVC metric: headline figures (qwk_argmax stays in metrics.json)
CV_PIPELINE = "cv/dvc.yaml"
CV_METRICS = "cv/metrics.json"


def sh(cmd: list[str], capture: bool = False) -> str:
    """Run a command, echoing it; raise with its output on failure."""
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    res = subprocess.run(cmd, text=True, capture_output=capture)
    if res.returncode != 0:
        raise SystemExit(f"command failed ({res.returncode}): {' '.join(cmd)}\n{res.stdout or ''}{res.stderr or ''}")
    return res.stdout or ""


def start_workers(jobs: int) -> None:
    """``dvc queue start``; its workers outlive this call, so they get no pipe of ours to hold open."""
    print(f"+ dvc queue start -j {jobs}", file=sys.stderr, flush=True)
    subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def queue(preset: Path, seeds: list[int], variants: list[str], target: str, extra: list[str],
          folds: int = 0) -> None:
    """Queue every (variant, seed), seeds outermost so that a deadline leaves whole seeds; with
    ``folds`` each is a run of ``cv/dvc.yaml`` (``target`` is then ignored) with ``cv.folds`` 0..folds-1."""
    import yaml

    base = {**read_preset(preset), **{k: yaml.safe_load(v) for k, v in (e.split("=", 1) for e in extra)}}
    if folds:
        base["cv.folds"] = list(range(folds))
    for name in variants:  # fails here, naming the key, before queueing
        flat = merged("params.yaml", {**base, **VARIANTS[name][0]})
        if folds:
            fold_params(params_from_dict(unflatten(flat), validate=False), folds - 1)
    for seed in seeds:
        for name in variants:
            overrides = {**base, **VARIANTS[name][0], "seed": seed}
            sh(["dvc", "exp", "run", "--queue", "-n", f"abl-{name}-s{seed}" + (f"-cv{folds}" if folds else ""),
                CV_PIPELINE if folds else target, *to_set_args(overrides, absolute=True)])


def run(jobs: int, deadline_s: float | None) -> None:
    """Start ``jobs`` workers and wait for the queue to drain (or the deadline, then kill).

    Workers exit on their own when the queue is empty. If queued experiments are left with nothing
    running (a worker that got a stale shutdown message, say), workers are started again.
    """
    start_workers(jobs)
    start = time.time()
    status, idle_polls = "", 0
    while True:
        time.sleep(10)
        status = sh(["dvc", "queue", "status"], capture=True)
        lines = status.splitlines()
        queued = [line.split()[0] for line in lines if " Queued" in line]
        running = [line.split()[0] for line in lines if " Running" in line]
        if not queued and not running:
            break
        if deadline_s is not None and time.time() - start > deadline_s:
            print(f"deadline of {deadline_s:.0f} s reached: {len(running)} running, {len(queued)} queued; "
                  "stopping", file=sys.stderr)
            if queued:
                subprocess.run(["dvc", "queue", "remove", *queued])
            if running:
                subprocess.run(["dvc", "queue", "kill", *running])
            break
        idle_polls = idle_polls + 1 if queued and not running else 0
        if idle_polls >= 2:
            start_workers(jobs)
            idle_polls = 0
    workers = re.search(r"Worker status: (\d+) active, (\d+) idle", status)
    if workers and int(workers[2]) > 0:  # only live workers: a stop with none left lingers for the next start
        subprocess.run(["dvc", "queue", "stop"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    print(status, file=sys.stderr)


def collect(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """``{variant: [{metric: value} per seed]}`` from parsed ``dvc exp show --json`` (one run per name:
    the newest, if an experiment name was run again). A cross-validated run (``-cv<K>``) gives its
    pooled out-of-fold figures and ``folds``: K."""
    runs: dict[tuple[str, int, int], tuple[str, dict[str, float]]] = {}
    for row in rows:
        for exp in row.get("experiments") or []:
            for rev in exp.get("revs", []):
                match = NAME.match(rev.get("name") or exp.get("name") or "")
                state = (exp.get("executor") or {}).get("state")
                if rev.get("error") or state not in (None, "success"):
                    continue  # failed, queued or running: shows its parent's metrics (`dvc queue logs <name>`)
                data = rev.get("data") or {}
                metrics = data.get("metrics", {})
                if not match:
                    continue
                # a run of one pipeline shows the other's metrics as its parent left them: read its own
                folds = 0 if match["folds"] is None else int(match["folds"])
                test = metrics.get(CV_METRICS if folds else METRICS, {}).get("data", {})
                test = test if folds else test.get("test")
                if not test:
                    continue
                key = (match["variant"], int(match["seed"]), folds)
                stamp = data.get("timestamp") or ""
                if key in runs and runs[key][0] >= stamp:
                    continue
                runs[key] = (stamp, {
                    "seed": key[1], **({"folds": folds} if folds else {}),
                    "qwk": test.get("qwk"), "qwk_argmax": test.get("qwk_argmax"),
                    "auc": test.get("referable_auc"), "sens": test.get("referable_sensitivity"),
                    "spec": test.get("referable_specificity")})
    out: dict[str, list[dict[str, float]]] = {}
    for (variant, _, _), (_, run) in sorted(runs.items()):
        out.setdefault(variant, []).append(run)
    return out


def mean_sd(values: list[float | None]) -> str:
    """Mean ± sd of the values that are numbers, as text; "n/a" if none."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "n/a"
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{mean:.3f}"
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    return f"{mean:.3f} ± {sd:.3f}"


def table(results: dict[str, list[dict[str, float]]]) -> str:
    lines = ["| variant | change from the preset | runs | QWK (cut-points) | QWK (argmax) | referable AUC "
             "| sensitivity | specificity |",
             "|---|---|---|---|---|---|---|---|"]
    for name, (_, what) in VARIANTS.items():
        mine = results.get(name, [])
        for folds in sorted({r.get("folds", 0) for r in mine}):  # single splits, then each fold count
            runs = sorted((r for r in mine if r.get("folds", 0) == folds), key=lambda r: r["seed"])
            count = f"{len(runs)} ({folds}-fold, pooled)" if folds else str(len(runs))
            lines.append(f"| {name} | {what} | {count} | {mean_sd([r['qwk'] for r in runs])} | "
                         f"{mean_sd([r['qwk_argmax'] for r in runs])} | {mean_sd([r['auc'] for r in runs])} | "
                         f"{mean_sd([r['sens'] for r in runs])} | {mean_sd([r['spec'] for r in runs])} |")
    return "\n".join(lines) + ("\n\nmean ± standard deviation over seeds (each seed tests its own patients; "
                                "k-fold, pooled: every photo tested once, out of fold)\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("queue", "all"):
        p = sub.add_parser(name)
        p.add_argument("--preset", type=Path, default=Path("presets/real-cpu.yaml"))
        p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
        p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
        p.add_argument("--folds", type=int, default=0, metavar="K",
                       help="cross-validate each (variant, seed): one run of cv/dvc.yaml over K folds")
        p.add_argument("--target", default="evaluate", help="pipeline stage to run up to (without --folds)")
        p.add_argument("--set", dest="extra", action="append", default=["evaluate.bootstrap=0"],
                       metavar="KEY=VALUE", help="override for every run (default: evaluate.bootstrap=0, "
                       "as the table reports the spread over seeds instead)")
    for name in ("run", "all"):
        p = sub.choices[name] if name in sub.choices else sub.add_parser(name)
        p.add_argument("-j", "--jobs", type=int, default=1)
        p.add_argument("--deadline-s", type=float, help="stop waiting (and kill what runs) after this long")
    for name in ("table", "all"):
        p = sub.choices[name] if name in sub.choices else sub.add_parser(name)
        p.add_argument("--exp-json", type=Path, help="a saved `dvc exp show --json` instead of asking DVC")
        p.add_argument("--out", type=Path, help="also write the table here")
        p.add_argument("--save-json", type=Path, help="also save `dvc exp show --json` here")
    args = parser.parse_args(argv)
    if args.cmd in ("queue", "all"):
        if args.folds == 1 or args.folds < 0:
            parser.error(f"--folds: got {args.folds}, expected 0 (no cross-validation) or a number of folds >= 2")
        queue(args.preset, args.seeds, args.variants, args.target, args.extra, args.folds)
    if args.cmd in ("run", "all"):
        run(args.jobs, args.deadline_s)
    if args.cmd in ("table", "all"):
        text = (args.exp_json.read_text() if args.exp_json else
                sh(["dvc", "exp", "show", "--all-commits", "--json"], capture=True))
        if args.save_json:
            args.save_json.write_text(text)
        md = table(collect(json.loads(text)))
        print(md)
        if args.out:
            args.out.write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
