"""A learning curve from cross-validations run at several training shares: would more photos help?

Each point is a DVC experiment of the cross-validation pipeline ``cv/dvc.yaml`` run with another
``split.train_fraction`` (val and test unchanged, so fold k tests the same photos at every share),
queued as one grid named ``lc`` (DVC names its runs ``lc-1``, ``lc-2``, ...)::

    dvc exp run --queue cv/dvc.yaml -n lc $(python -m dr_core.cli.presets presets/real-cpu.yaml --absolute) \\
        -S split.train_fraction=0.25,0.5,1.0
    dvc queue start -j 1                  # wait until `dvc queue status` shows no Queued or Running
    python -m research.learning_curve --name lc --train-photos 430 --png docs/learning_curve.png

The runs and their ``split.train_fraction`` come from ``dvc exp show --json``; each run's
``cv/metrics.json`` is read from its experiment commit (``dvc exp show`` leaves out the per-fold
lists). Prints, per share, the pooled out-of-fold AUC and QWK with their patient-bootstrap
intervals and the fold-by-fold change against the largest share; fits each figure against log2 of
the training photos and says at how many photos the fit would reach a target. With ``--png`` it
draws both curves.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dr_core.config.presets import flatten

CV_METRICS = "cv/metrics.json"
SHARE = "split.train_fraction"
FIGURES = (("referable_auc", "auc", "referable AUC"), ("qwk", "qwk", "QWK (cut-points)"))


def exp_show() -> list[dict[str, Any]]:
    """Parsed ``dvc exp show --json`` of the current commit's experiments."""
    out = subprocess.run(["dvc", "exp", "show", "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def read_cv_metrics(rev: str) -> dict[str, Any]:
    """``cv/metrics.json`` as the experiment commit ``rev`` holds it."""
    import dvc.api

    return json.loads(dvc.api.read(CV_METRICS, rev=rev))


def load_points(shown: list[dict[str, Any]], name: str,
                read: Callable[[str], dict[str, Any]] = read_cv_metrics) -> list[dict[str, Any]]:
    """The finished experiments ``<name>-<n>`` of parsed ``dvc exp show --json``: per experiment its
    share, its pooled out-of-fold figures and its folds' ``{fold: {"auc", "qwk", "val_auc"}}``
    (``read`` gives an experiment's ``cv/metrics.json`` from its commit).

    Raises:
        ValueError: none found, one lacks ``cv/metrics.json``, two share a training share, or they
            differ in a setting other than the share (not points of one curve).
    """
    pattern = re.compile(rf"^{re.escape(name)}-\d+$")
    points, settings = [], {}
    for row in shown:
        for exp in row.get("experiments") or []:
            state = (exp.get("executor") or {}).get("state")
            for rev in exp.get("revs", []):
                label = rev.get("name") or exp.get("name") or ""
                if not pattern.match(label) or rev.get("error") or state not in (None, "success"):
                    continue  # another experiment, or failed, queued or running (`dvc queue logs <name>`)
                data = rev.get("data") or {}
                params = flatten(data.get("params", {}).get("params.yaml", {}).get("data", {}))
                try:
                    pooled = read(rev["rev"])
                except FileNotFoundError:
                    pooled = {}
                if "folds" not in pooled or SHARE not in params:
                    raise ValueError(f"experiment {label}: no {CV_METRICS} with per-fold figures; was it a run "
                                     "of cv/dvc.yaml?")
                folds = pooled["folds"]
                points.append({"name": label, "share": float(params.pop(SHARE)), "pooled": pooled,
                               "folds": {k: {"auc": a, "qwk": q, "val_auc": v} for k, (a, q, v) in enumerate(
                                   zip(folds["referable_auc"], folds["qwk"], folds["val_referable_auc"]))}})
                settings[label] = params
    if not points:
        raise ValueError(f"no finished experiment named {name}-<n>; queue them with `dvc exp run --queue "
                         f"cv/dvc.yaml -n {name} -S {SHARE}=0.25,0.5,1.0` and `dvc queue start`")
    shares = [p["share"] for p in points]
    if len(set(shares)) != len(shares):
        raise ValueError(f"each training share may be given once; {name}-<n> has {sorted(shares)}")
    first, *rest = settings
    for label in rest:
        differ = sorted(k for k in settings[first].keys() | settings[label].keys()
                        if settings[first].get(k) != settings[label].get(k))
        if differ:
            raise ValueError(f"experiments {first} and {label} differ in {', '.join(differ)}, not only in {SHARE}")
    return points


def fit_log2(shares: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """Least-squares ``value = a + b * log2(share)``: (a, b), b the change per doubling."""
    b, a = np.polyfit(np.log2(shares), values, 1)
    return float(a), float(b)


def share_reaching(target: float, a: float, b: float) -> float | None:
    """The share at which the fit reaches ``target`` (None if it never rises)."""
    return float(2 ** ((target - a) / b)) if b > 0 else None


def curve(points: list[dict[str, Any]], targets: dict[str, float]) -> dict[str, Any]:
    """Table rows per share (largest last) and the log2 fit of each figure."""
    points = sorted(points, key=lambda p: p["share"])
    top = points[-1]
    rows = []
    for p in points:
        common = sorted(set(p["folds"]) & set(top["folds"]))
        row = {"share": p["share"], "val_auc": float(np.mean([f["val_auc"] for f in p["folds"].values()]))}
        for key, fold_key, _ in FIGURES:
            row[key] = p["pooled"][key]
            row[f"{key}_ci"] = (p["pooled"].get(f"{key}_ci_low"), p["pooled"].get(f"{key}_ci_high"))
            diffs = [p["folds"][k][fold_key] - top["folds"][k][fold_key] for k in common]
            row[f"{key}_vs_top"] = (float(np.mean(diffs)), min(diffs), max(diffs)) if diffs else None
        rows.append(row)
    fits = {}
    shares = np.array([r["share"] for r in rows])
    for key, _, _ in FIGURES if len(rows) >= 2 else ():
        a, b = fit_log2(shares, np.array([r[key] for r in rows]))
        # the two largest shares alone: a curve that flattens reaches the target later than the fit says
        (s0, v0), (s1, v1) = [(r["share"], r[key]) for r in rows[-2:]]
        last = (v1 - v0) / np.log2(s1 / s0)
        fits[key] = {"a": a, "per_doubling": b, "target": targets[key],
                     "share_at_target": share_reaching(targets[key], a, b), "last_per_doubling": float(last),
                     "share_at_target_last": share_reaching(targets[key], v1 - last * np.log2(s1), last)}
    return {"rows": rows, "fits": fits}


def table(result: dict[str, Any], train_photos: float | None) -> str:
    def photos(share: float) -> str:
        return f" (about {share * train_photos:.0f} photos)" if train_photos else ""

    def ci(value: float, interval: tuple[Any, Any]) -> str:
        low, high = interval
        return f"{value:.3f}" + (f" ({low:.3f}-{high:.3f})" if low is not None and high is not None else "")

    def change(d: tuple[float, float, float] | None, top: bool) -> str:
        return "" if top or d is None else f"{d[0]:+.3f} ({d[1]:+.3f} to {d[2]:+.3f})"

    lines = ["| training share (per fold) | mean val AUC | pooled test AUC (95% CI) | fold by fold, against the "
             "largest share | pooled test QWK (95% CI) | fold by fold, against the largest share |",
             "|---|---|---|---|---|---|"]
    last = len(result["rows"]) - 1
    for i, r in enumerate(result["rows"]):
        lines.append(f"| {r['share']:g}{photos(r['share'])} | {r['val_auc']:.3f} | "
                     f"{ci(r['referable_auc'], r['referable_auc_ci'])} | {change(r['referable_auc_vs_top'], i == last)} | "
                     f"{ci(r['qwk'], r['qwk_ci'])} | {change(r['qwk_vs_top'], i == last)} |")
    for key, _, name in FIGURES:
        fit = result["fits"].get(key)
        if fit is None:
            continue
        reach = fit["share_at_target"]
        where = ("never, on this fit" if reach is None else
                 f"at {reach:.1f}x the largest share{photos(reach)}, extrapolated")
        lines.append(f"\n{name}: {fit['per_doubling']:+.3f} per doubling of the training photos "
                     f"(least squares on log2 of the share); {fit['target']:.2f} {where}.")
        if len(result["rows"]) > 2:
            reach = fit["share_at_target_last"]
            where = ("never" if reach is None else f"at {reach:.1f}x the largest share{photos(reach)}")
            lines.append(f"Between the two largest shares alone: {fit['last_per_doubling']:+.3f} per doubling; "
                         f"{fit['target']:.2f} {where} at that rate.")
    return "\n".join(lines)


def plot(result: dict[str, Any], train_photos: float | None, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = train_photos or 1.0
    rows = result["rows"]
    x = np.array([r["share"] for r in rows]) * scale
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (key, _, name) in zip(axes, FIGURES):
        y = np.array([r[key] for r in rows])
        low = np.array([r[f"{key}_ci"][0] if r[f"{key}_ci"][0] is not None else v for r, v in zip(rows, y)])
        high = np.array([r[f"{key}_ci"][1] if r[f"{key}_ci"][1] is not None else v for r, v in zip(rows, y)])
        ax.errorbar(x, y, yerr=[y - low, high - y], fmt="o-", capsize=4, label="pooled out of fold (95% CI)")
        fit = result["fits"].get(key)
        if fit is not None:
            end = max(x[-1] * 4, (fit["share_at_target"] or 0) * scale * 1.2)
            xs = np.geomspace(x[0], end, 50)
            ax.plot(xs, fit["a"] + fit["per_doubling"] * np.log2(xs / scale), "--", color="grey",
                    label=f"log2 fit: {fit['per_doubling']:+.3f} per doubling")
            ax.axhline(fit["target"], color="tab:red", lw=1, label=f"target {fit['target']:.2f}")
        ax.set_xscale("log", base=2)
        ticks = [*x, *(x[-1] * np.array([2.0, 4.0]))]
        ax.set_xticks(ticks, [f"{t:.0f}" if train_photos else f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("training photos per fold" if train_photos else "share of the training patients")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Learning curve: the same folds, trained on a share of their training patients")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="lc", help="the experiments <name>-1, <name>-2, ... (dvc exp run -n)")
    parser.add_argument("--train-photos", type=float, help="training photos per fold at share 1 (labels only)")
    parser.add_argument("--target-auc", type=float, default=0.85)
    parser.add_argument("--target-qwk", type=float, default=0.60)
    parser.add_argument("--png", type=Path, help="also draw the curves here")
    parser.add_argument("--json", type=Path, help="also write the rows and fits here")
    args = parser.parse_args(argv)
    try:
        points = load_points(exp_show(), args.name, read_cv_metrics)
    except ValueError as e:
        parser.error(str(e))
    result = curve(points, {"referable_auc": args.target_auc, "qwk": args.target_qwk})
    print(table(result, args.train_photos))
    if args.png:
        plot(result, args.train_photos, args.png)
        print(f"\nwrote {args.png}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
