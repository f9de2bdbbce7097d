"""A learning curve from cross-validations run at several training shares: would more photos help?

Each point is a ``bench/sweep.py --folds K --json ROWS`` output of the same variant, seed and folds,
run with ``--set split.train_fraction=F`` (val and test unchanged, so fold k tests the same photos
at every share). Prints, per share, the pooled out-of-fold AUC and QWK with their patient-bootstrap
intervals and the fold-by-fold change against the largest share; fits each figure against log2 of
the training photos and says at how many photos the fit would reach a target. With ``--png`` it
draws both curves.

    python bench/learning_curve.py 0.25=docs/sweep_cv_train0.25.json 0.5=docs/sweep_cv_train0.5.json \\
        1=docs/sweep_cv.json --train-photos 430 --png docs/learning_curve.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

FIGURES = (("referable_auc", "auc", "referable AUC"), ("qwk", "qwk", "QWK (cut-points)"))


def load_point(spec: str, variant: str, seed: int) -> dict[str, Any]:
    """``FRACTION=ROWS.json``: the share and its fold rows and out-of-fold row for (variant, seed)."""
    fraction, _, path = spec.partition("=")
    try:
        share = float(fraction)
    except ValueError:
        share = -1.0
    if not path or not 0.0 < share <= 1.0:
        raise ValueError(f"{spec!r}: expected FRACTION=ROWS.json with a fraction in (0, 1], e.g. 0.5=lc0.5/rows.json")
    rows = json.loads(Path(path).read_text())
    mine = [r for r in rows if r.get("variant") == variant and r.get("seed") == seed and r.get("rc") == 0]
    pooled = [r for r in mine if r.get("kind") == "out_of_fold"]
    folds = {r["fold"]: r for r in mine if r.get("fold") is not None}
    if not pooled:
        raise ValueError(f"{path}: no out_of_fold row for {variant} seed {seed}; was it a finished "
                         f"bench/sweep.py --folds run of that variant and seed?")
    return {"share": share, "pooled": pooled[-1], "folds": folds}


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
    parser.add_argument("points", nargs="+", help="FRACTION=ROWS.json, one per training share")
    parser.add_argument("--variant", default="preset")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--train-photos", type=float, help="training photos per fold at share 1 (labels only)")
    parser.add_argument("--target-auc", type=float, default=0.85)
    parser.add_argument("--target-qwk", type=float, default=0.60)
    parser.add_argument("--png", type=Path, help="also draw the curves here")
    parser.add_argument("--json", type=Path, help="also write the rows and fits here")
    args = parser.parse_args(argv)
    try:
        points = [load_point(p, args.variant, args.seed) for p in args.points]
    except (ValueError, OSError) as e:
        parser.error(str(e))
    if len({p["share"] for p in points}) != len(points):
        parser.error("each training share may be given once")
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
