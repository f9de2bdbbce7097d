"""The ablation of ``bench/ablation.py`` without DVC: each (variant, seed) runs the stage entry
points directly in its own folder, several at once.

For a machine where DVC's queue is the bottleneck rather than training (one GPU, many cores): no
temporary git copies, and the split and image cache are built once per seed and preprocessing
setting, then shared by every variant that uses them. The variants, the preset and the table are
those of ``bench/ablation.py``; the table adds the validation figures, so that a recipe can be
chosen on validation splits and only reported on test.

    python bench/sweep.py --seeds 1 2 3 -j 8 --out-dir /tmp/sweep --md sweep.md
    python bench/sweep.py --variants preset ce --seeds 42 --set train.device=cpu -j 1
    python bench/sweep.py --render docs/sweep_gpu.json        # the tables again, from saved rows
    python bench/sweep.py --variants preset --seeds 42 --train-on-val -j 1   # refit on train+val
    python bench/sweep.py --variants preset --seeds 42 --folds 5 -j 1          # 5-fold cross-validation

``--train-on-val`` trains each run on train and val together and scores it on the same test split:
what more photos would give. Its val figures are in-sample, and so are the cut-points and the
operating point chosen on val.

``--folds K`` runs each (variant, seed) K times, with ``split.folds: K`` and ``split.fold`` 0..K-1:
every photograph is then tested once, and a third table pools the K test predictions (out-of-fold
figures on all photographs, with patient-bootstrap intervals; ``dr_core.evaluation.crossval``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from ablation import VARIANTS, mean_sd  # noqa: E402

from dr_core.evaluation.crossval import out_of_fold, read_folds  # noqa: E402
from dr_core.config.presets import PATH_KEYS, merged, read_preset, unflatten  # noqa: E402

# what the split and the cache depend on (the keys of dvc.yaml's split and preprocess stages)
DATA_PREFIXES = ("seed", "data.", "split.", "model.num_classes", "preprocess.")


def data_key(flat: dict[str, Any]) -> str:
    """Name of the data folder (split and cache) a run's flattened params need: runs that agree on
    every data, split and preprocessing key share one."""
    part = {k: v for k, v in sorted(flat.items()) if k.startswith(DATA_PREFIXES)}
    return hashlib.sha1(json.dumps(part, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _run(cmd: list[str], log: Path, cwd: Path, deadline: float | None) -> int:
    """Run ``cmd`` (a ``python -m stages.*`` call) in ``cwd``, appending its output to ``log``; kill it
    at the deadline."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    timeout = None if deadline is None else max(1.0, deadline - time.time())
    with log.open("a") as fh:
        fh.write("+ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, text=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            fh.write("killed at the deadline\n")
            return -9


def plan(preset: Path, variants: list[str], seeds: list[int], extra: dict[str, Any],
         folds: int = 0) -> list[dict[str, Any]]:
    """One entry per (seed, fold, variant), seeds outermost so that a deadline leaves whole seeds;
    ``folds`` 0 runs the preset's single split (no ``fold`` key), K runs folds 0..K-1."""
    base = {**read_preset(preset), **extra}
    runs = []
    for seed in seeds:
        for fold in range(folds) if folds else [None]:
            split = {} if fold is None else {"split.folds": folds, "split.fold": fold}
            for name in variants:
                flat = merged(ROOT / "params.yaml", {**base, **VARIANTS[name][0], **split, "seed": seed})
                for key in PATH_KEYS:
                    flat[key] = str((ROOT / str(flat[key])).resolve())
                run = {"variant": name, "seed": seed, "params": flat, "data_key": data_key(flat)}
                if fold is not None:
                    run["fold"] = fold
                runs.append(run)
    return runs


def run_name(run: dict[str, Any]) -> str:
    """``<variant>-s<seed>``, with ``-f<fold>`` for a cross-validation fold."""
    return f"{run['variant']}-s{run['seed']}" + (f"-f{run['fold']}" if run.get("fold") is not None else "")


def _identity(run: dict[str, Any]) -> dict[str, Any]:
    """What names a run in its row: variant, seed and, in a cross-validation, fold."""
    return {"variant": run["variant"], "seed": run["seed"], **({"fold": run["fold"]} if "fold" in run else {})}


def _split(row: dict[str, Any]) -> tuple[int, int]:
    """What pairs two rows: the same seed and fold (-1 without folds)."""
    fold = row.get("fold")
    return row["seed"], -1 if fold is None else fold


def _split_label(row: dict[str, Any]) -> str:
    return str(row["seed"]) if row.get("fold") is None else f"{row['seed']}/f{row['fold']}"


def build_data(run: dict[str, Any], out: Path, deadline: float | None) -> Path | None:
    """Split and cache for this run's data key (once; later runs reuse it). None on failure."""
    folder = out / "data" / run["data_key"]
    if (folder / "cache" / "cache_info.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    params = folder / "params.yaml"
    params.write_text(yaml.safe_dump(unflatten(run["params"]), sort_keys=False))
    p = run["params"]
    py = sys.executable
    for cmd in ([py, "-m", "stages.split", "--labels-csv", p["data.labels_csv"], "--img-dir", p["data.img_dir"],
                 "--out", "split", "--metrics", "split.json", "--params", str(params)],
                [py, "-m", "stages.preprocess", "--split-dir", "split", "--img-dir", p["data.img_dir"],
                 "--out", "cache", "--params", str(params)]):
        if _run(cmd, folder / "log.txt", folder, deadline) != 0:
            print(f"data {run['data_key']} failed: see {folder / 'log.txt'}", file=sys.stderr, flush=True)
            return None
    return folder


def with_val_in_train(data: Path) -> Path:
    """A data folder beside ``data`` whose cached train split is train followed by val (val and test
    unchanged, linked), built once. Row i of ``train.npy`` stays row i of ``train.csv``."""
    src, folder = data / "cache", data.with_name(data.name + "-train+val")
    dst = folder / "cache"
    if (dst / "cache_info.json").exists():
        return folder
    dst.mkdir(parents=True, exist_ok=True)
    for split in ("val", "test"):
        (dst / f"{split}.csv").write_bytes((src / f"{split}.csv").read_bytes())
        (dst / f"{split}.npy").unlink(missing_ok=True)
        (dst / f"{split}.npy").symlink_to((src / f"{split}.npy").resolve())
    parts = [np.load(src / f"{split}.npy", mmap_mode="r") for split in ("train", "val")]
    both = np.lib.format.open_memmap(dst / "train.npy.tmp", mode="w+", dtype=parts[0].dtype,
                                     shape=(sum(len(a) for a in parts), *parts[0].shape[1:]))
    both[:len(parts[0])], both[len(parts[0]):] = parts
    both.flush()
    del both
    os.replace(dst / "train.npy.tmp", dst / "train.npy")
    train_csv, val_csv = ((src / f"{split}.csv").read_text().splitlines(keepends=True) for split in ("train", "val"))
    (dst / "train.csv").write_text("".join(train_csv + val_csv[1:]))  # one header
    (dst / "cache_info.json").write_bytes((src / "cache_info.json").read_bytes())
    return folder


def train_and_evaluate(run: dict[str, Any], data: Path, out: Path, deadline: float | None) -> dict[str, Any]:
    folder = out / "runs" / run_name(run)
    folder.mkdir(parents=True, exist_ok=True)
    params = folder / "params.yaml"
    params.write_text(yaml.safe_dump(unflatten(run["params"]), sort_keys=False))
    py, cache, log = sys.executable, str(data / "cache"), folder / "log.txt"
    start = time.time()
    rc = _run([py, "-m", "stages.train", "--cache-dir", cache, "--save-dir", "models", "--live-dir", "dvclive/train",
               "--params", str(params)], log, folder, deadline)
    if rc == 0:
        rc = _run([py, "-m", "stages.evaluate", "--model-path", "models/best_model.pth", "--cache-dir", cache,
                   "--out", "results", "--params", str(params)], log, folder, deadline)
    row: dict[str, Any] = {**_identity(run), "change": run.get("change") or VARIANTS[run["variant"]][1],
                           "rc": rc, "wall_seconds": round(time.time() - start, 1), "folder": str(folder)}
    if rc == 0:
        test = json.loads((folder / "results" / "metrics.json").read_text())["test"]
        train = json.loads((folder / "dvclive" / "train" / "metrics.json").read_text())
        row.update({"qwk": test.get("qwk"), "qwk_argmax": test.get("qwk_argmax"), "auc": test.get("referable_auc"),
                    "sens": test.get("referable_sensitivity"), "spec": test.get("referable_specificity"),
                    "val_auc": test.get("val_referable_auc"), "val_qwk": test.get("val_qwk"),
                    "seconds": train.get("train_seconds")})
    status = "ok" if rc == 0 else f"FAILED rc={rc}: see {log}"
    print(f"{run_name(run):>18}: {status} "
          + (f"val AUC {row['val_auc']:.3f} test AUC {row['auc']:.3f} test QWK {row['qwk']:.3f} " if rc == 0 else "")
          + f"({row['wall_seconds']:.0f} s)", flush=True)
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    """One line per variant: mean ± sd over seeds of the validation and the test figures."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["rc"] == 0 and r.get("kind") != "out_of_fold":
            by_variant.setdefault(r["variant"], []).append(r)
    lines = ["| variant | change from the preset | seeds | val AUC | val QWK (cut-points) | test AUC "
             "| test QWK (cut-points) | test QWK (argmax) | sensitivity | specificity | train time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    names = list(VARIANTS) + [v for v in by_variant if v not in VARIANTS]  # saved rows may predate a rename
    for name in names:
        runs = sorted(by_variant.get(name, []), key=_split)
        if runs:
            what = runs[0].get("change") or (VARIANTS[name][1] if name in VARIANTS else "")
            cells = [mean_sd([r[k] for r in runs]) for k in ("val_auc", "val_qwk", "auc", "qwk", "qwk_argmax",
                                                             "sens", "spec")]
            secs = [r["seconds"] for r in runs if r.get("seconds") is not None]
            cells.append(f"{sum(secs) / len(secs):.0f}" if secs else "n/a")
            lines.append(f"| {name} | {what} | {', '.join(map(_split_label, runs))} | " + " | ".join(cells) + " |")
    lines += ["", "mean ± standard deviation over seeds (each seed is its own patient-level split; "
              "seed/fK: fold K of that seed's cross-validation); val: the validation split of the same run"]
    lines += paired(by_variant, names)
    lines += pooled_table([r for r in rows if r.get("kind") == "out_of_fold"])
    failed = [run_name(r) for r in rows if r["rc"] != 0]
    if failed:
        lines += ["", f"not finished: {', '.join(failed)}"]
    return "\n".join(lines) + "\n"


def _delta(values: list[float]) -> str:
    """Mean and range of paired differences, signed: ``+0.012 (-0.020 to +0.040)``."""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:+.3f}"
    return f"{mean:+.3f} ({min(values):+.3f} to {max(values):+.3f})"


def paired(by_variant: dict[str, list[dict[str, Any]]], names: list[str], baseline: str = "preset") -> list[str]:
    """A second table: each variant minus ``baseline`` on the seeds both ran, split by split.

    The split moves test AUC by about ±0.05 on 718 photos; a paired difference takes that out and
    leaves what the change did plus the run-to-run noise. ``held-out AUC`` is the mean of the val
    and test AUC differences: where the final weights are kept (``train.monitor: last``) val chooses
    only cut-points and a threshold, which leave AUC alone, so val AUC is a second held-out estimate
    on as many photos as test. Rows are paired by seed only; the last column names the machines (the
    start of each row's ``session`` field, if any), so pairs that cross machines show. Empty when the
    baseline has no rows.
    """
    base = {_split(r): r for r in by_variant.get(baseline, [])}
    lines: list[str] = []
    for name in names:
        if name == baseline:
            continue
        runs = sorted((r for r in by_variant.get(name, []) if _split(r) in base), key=_split)
        if not runs:
            continue
        diffs = {key: [_value(r, key) - _value(base[_split(r)], key) for r in runs
                       if _value(r, key) is not None and _value(base[_split(r)], key) is not None]
                 for key in ("val_auc", "auc", "held_out", "qwk")}
        cells = [_delta(d) if d else "n/a" for d in diffs.values()]
        up = f"{sum(d > 0 for d in diffs['auc'])} of {len(diffs['auc'])}"
        mine, theirs = _machines(runs), _machines([base[_split(r)] for r in runs])
        where = mine if mine == theirs else f"{mine} ({baseline}: {theirs})"
        lines.append(f"| {name} | {', '.join(map(_split_label, runs))} | " + " | ".join(cells)
                     + f" | {up} | {where} |")
    if not lines:
        return []
    return ["", f"Paired with `{baseline}` on the same splits: mean difference (range over splits)", "",
            "| variant | seeds | val AUC | test AUC | held-out AUC (val and test) | test QWK (cut-points) "
            "| splits where test AUC rose | machine |",
            "|---|---|---|---|---|---|---|---|", *lines]


def pooled(rows: list[dict[str, Any]], folds: int) -> list[dict[str, Any]]:
    """An ``out_of_fold`` row per (variant, seed) whose ``folds`` runs all finished: their test
    predictions pooled (``dr_core.evaluation.crossval``)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("fold") is not None:
            groups.setdefault((r["variant"], r["seed"]), []).append(r)
    out = []
    for (variant, seed), runs in groups.items():
        if sorted(r["fold"] for r in runs if r["rc"] == 0) != list(range(folds)):
            continue
        runs = sorted(runs, key=lambda r: r["fold"])
        params = yaml.safe_load((Path(runs[0]["folder"]) / "params.yaml").read_text())
        table = read_folds([Path(r["folder"]) / "results" / "predictions.csv" for r in runs])
        figures = out_of_fold(table, params["model"]["num_classes"], params["evaluate"]["referable_grade"])
        out.append({"kind": "out_of_fold", "variant": variant, "seed": seed, "rc": 0,
                    "session": runs[0].get("session"), **figures})
    return out


def pooled_table(rows: list[dict[str, Any]]) -> list[str]:
    """The out-of-fold rows as a table; empty without any."""
    if not rows:
        return []
    lines = ["", "Out of fold: every photograph tested once, by the fold's model that never saw its patient "
             "(95% intervals resample patients)", "",
             "| variant | seed | folds | photos (referable) | referable AUC | per-fold AUC, mean (range) "
             "| QWK (cut-points) | sensitivity | specificity |", "|---|---|---|---|---|---|---|---|---|"]

    def ci(r: dict[str, Any], key: str) -> str:
        low, high = r.get(f"{key}_ci_low"), r.get(f"{key}_ci_high")
        interval = f" ({low:.3f}-{high:.3f})" if low is not None and high is not None else ""
        return f"{r[key]:.3f}{interval}"

    for r in rows:
        folds = [a for a in r["fold_referable_auc"] if a is not None]
        spread = f"{r['fold_referable_auc_mean']:.3f} ({min(folds):.3f} to {max(folds):.3f})" if folds else "n/a"
        lines.append(f"| {r['variant']} | {r['seed']} | {r['n_folds']} | {r['n_images']} ({r['n_referable']}) | "
                     f"{ci(r, 'referable_auc')} | {spread} | {ci(r, 'qwk')} | {ci(r, 'referable_sensitivity')} | "
                     f"{ci(r, 'referable_specificity')} |")
    return lines


def _value(row: dict[str, Any], key: str) -> float | None:
    """A row's figure; ``held_out`` is the mean of its val and test AUC (None when either is missing)."""
    if key != "held_out":
        return row.get(key)
    val, test = row.get("val_auc"), row.get("auc")
    return None if val is None or test is None else (val + test) / 2


def _machines(rows: list[dict[str, Any]]) -> str:
    """The machines rows ran on: the part of each ``session`` before its first comma ("AMD VM")."""
    names = sorted({str(r.get("session") or "").split(",")[0].strip() or "not recorded" for r in rows})
    return " + ".join(names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", type=Path, default=ROOT / "presets/real-cpu.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--set", dest="extra", action="append", default=["evaluate.bootstrap=0"],
                        metavar="KEY=VALUE", help="override for every run (default: evaluate.bootstrap=0)")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="runs trained at once")
    parser.add_argument("--out-dir", type=Path, default=Path("sweep"))
    parser.add_argument("--deadline-s", type=float, help="kill what still runs after this long; skip the rest")
    parser.add_argument("--md", type=Path, help="also write the tables here")
    parser.add_argument("--json", type=Path, help="also write one row per run here")
    parser.add_argument("--folds", type=int, default=0, metavar="K",
                        help="cross-validate: K runs per (variant, seed), fold 0..K-1 as test; pool their predictions")
    parser.add_argument("--train-on-val", action="store_true",
                        help="train on train+val, score on the same test split (val figures become in-sample)")
    parser.add_argument("--render", type=Path, nargs="+", metavar="JSON",
                        help="run nothing: print the tables of rows saved by --json (several files are merged)")
    args = parser.parse_args(argv)
    if args.render:
        rows = [row for path in args.render for row in json.loads(path.read_text())]
        done = {(r["variant"], _split(r)) for r in rows if r["rc"] == 0}
        rows = [r for r in rows if r["rc"] == 0 or (r["variant"], _split(r)) not in done]
        print(markdown(rows))
        return 0
    extra = {k: yaml.safe_load(v) for k, v in (e.split("=", 1) for e in args.extra)}
    deadline = None if args.deadline_s is None else time.time() + args.deadline_s
    out = args.out_dir.resolve()
    if args.folds == 1 or args.folds < 0:
        parser.error(f"--folds: got {args.folds}, expected 0 (no cross-validation) or a number of folds >= 2")
    runs = plan(args.preset, args.variants, args.seeds, extra, args.folds)
    if args.train_on_val:
        for run in runs:
            run["change"] = VARIANTS[run["variant"]][1] + "; trained on train+val (val figures in-sample)"
            run["variant"] += "+val"
    print(f"{len(runs)} runs, {len({r['data_key'] for r in runs})} data folders, {args.jobs} at once", flush=True)

    rows: list[dict[str, Any]] = []
    bad_data: set[str] = set()  # data keys whose split or cache failed: not tried again
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = []
        for run in runs:  # data folders are built here, one at a time (each uses every core)
            if deadline is not None and time.time() > deadline:
                rows.append({**_identity(run), "rc": "skipped"})
                continue
            data = None if run["data_key"] in bad_data else build_data(run, out, deadline)
            if data is None:
                bad_data.add(run["data_key"])
                rows.append({**_identity(run), "rc": "no data"})
                continue
            if args.train_on_val:
                data = with_val_in_train(data)
            futures.append(pool.submit(train_and_evaluate, run, data, out, deadline))
        rows += [f.result() for f in futures]
    if args.folds:
        rows += pooled(rows, args.folds)
    md = markdown(rows)
    print(md)
    if args.md:
        args.md.write_text(md)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
