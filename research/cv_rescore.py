"""Two more questions asked of a cross-validation's fold models (the ``cv/`` folder that ``cv/dvc.yaml``
fills, e.g. by ``make real-cpu-cv``, run with the settings in ``params.yaml``), without training anything new.

``resolution``: does scoring each fold's model at a larger input than it trained at help (the
"train-test resolution discrepancy" of random-zoom augmentation)? Each fold's val and test photos are
preprocessed again at ``--cache-size``, resized to each of ``--sizes``, and scored as the evaluate
stage scores them: fellow-eye blend, cut-points and QWK chosen on that fold's val.

``probe``: how far is the fine-tuned model above a linear model on frozen ImageNet features, and does
such a model add to it? Every photo's frozen features (the final features' average; and the average,
maximum and generalised mean of the last three feature stages and of the final features; each the
mean of the photo and its mirror image) are extracted once at ``--size``. On each fold a ridge
regression on the grade and a logistic regression on referable DR, their penalty chosen by a
patient-grouped 5-fold search inside the fold's training photos (its train and val splits: nothing
else is tuned on them), score the fold's test photos. Each fold's scores are ranked within the fold before
pooling (the fold models' scales differ), alone and averaged with the fine-tuned model's ranks. The
ridge's grades come from QWK cut-points tuned on that search's out-of-fold predictions of the
training photos, and their pooled QWK is printed beside the fine-tuned folds' own.

    python -m research.cv_rescore resolution --cv-dir cv --cache-size 640 --sizes 448 512 576 640
    python -m research.cv_rescore probe --cv-dir cv --size 384 --size 768
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from tqdm.auto import tqdm

from dr_core.config import ConfigError, Params, load_params
from dr_core.data.cache import image_paths
from dr_core.evaluation.crossval import read_folds
from dr_core.evaluation.cutpoints import apply_cutpoints, decide_grades, optimize_cutpoints
from dr_core.evaluation.evaluate import load_raw_images
from dr_core.evaluation.eyes import fellow_eye_predictions
from dr_core.evaluation.inference import predict_probs
from dr_core.evaluation.metrics import binary_auc, quadratic_weighted_kappa, referable_score
from dr_core.evaluation.report import choose_cutpoints
from dr_core.models.backbone import build_model, normalisation
from dr_core.models.checkpoint import load_checkpoint

log = logging.getLogger(__name__)


def fold_runs(cv_dir: Path, params: Params) -> list[dict[str, Any]]:
    """The finished folds of ``params.cv.folds`` in ``cv_dir``, laid out as cv/dvc.yaml writes them:
    ``fold<k>/split`` (the split CSVs), ``fold<k>/models/best_model.pth`` and ``results/fold<k>/``."""
    folds = []
    for k in params.cv.folds:
        fold_dir, results = cv_dir / f"fold{k}", cv_dir / "results" / f"fold{k}"
        model = fold_dir / "models" / "best_model.pth"
        if not (model.exists() and (results / "predictions.csv").exists()):
            log.warning("%s: no model or predictions, skipped (an unfinished fold)", fold_dir)
            continue
        if not (fold_dir / "split" / "test.csv").exists():
            raise FileNotFoundError(f"{fold_dir / 'split'}: no split CSVs; `dvc checkout cv/dvc.yaml` restores them")
        folds.append({"fold": k, "split": fold_dir / "split", "results": results, "model": model, "params": params})
    if not folds:
        raise FileNotFoundError(f"no finished folds of cv.folds {list(params.cv.folds)} under {cv_dir}; run "
                                "`dvc repro cv/dvc.yaml` (or `make real-cpu-cv`) first")
    return folds


def _split_images(fold: dict[str, Any], split: str, cache_size: int) -> tuple[pd.DataFrame, np.ndarray]:
    params: Params = fold["params"]
    csv = fold["split"] / f"{split}.csv"
    table = pd.read_csv(csv)
    pre = dataclasses.replace(params.preprocess, cache_size=cache_size)
    return table, load_raw_images(image_paths(table, _img_dirs(params), csv), pre)


def _img_dirs(params: Params) -> dict[str, Path]:
    """Each source's photograph folder (data.sources), where the split CSVs' ``file`` lies."""
    return {name: Path(source.img_dir) for name, source in params.data.sources.items()}


def resolution(folds: list[dict[str, Any]], cache_size: int, sizes: list[int]) -> list[dict[str, Any]]:
    """One row per (fold, size): val AUC, test AUC (with and without the blend) and test QWK, plus
    each size's pooled figures over the folds (``fold`` None)."""
    rows, pooled = [], {s: [] for s in sizes}
    for fold in folds:
        cfg = fold["params"].evaluate
        model, meta = load_checkpoint(fold["model"])
        data = {split: _split_images(fold, split, cache_size) for split in ("val", "test")}
        for size in sizes:
            start = time.time()
            raw, probs, score = {}, {}, {}
            for split, (table, images) in data.items():
                raw[split] = predict_probs(model, images, dataclasses.replace(meta, image_size=size), cfg.batch_size)
                probs[split], score[split] = fellow_eye_predictions(
                    raw[split], table["patient"].tolist(), cfg.fellow_eye_weight, cfg.fellow_eye_scope,
                    cfg.referable_grade)
            y = {split: table["grade"].to_numpy() for split, (table, _) in data.items()}
            cuts = choose_cutpoints(y["val"], probs["val"], cfg)
            grades = decide_grades(probs["test"], cuts)
            own = referable_score(raw["test"], cfg.referable_grade)  # the photo alone, whatever the blend's scope
            ref = {split: v >= cfg.referable_grade for split, v in y.items()}
            rows.append({"fold": fold["fold"], "size": size, "val_auc": binary_auc(ref["val"], score["val"]),
                         "auc": binary_auc(ref["test"], score["test"]), "auc_own": binary_auc(ref["test"], own),
                         "qwk": quadratic_weighted_kappa(y["test"], grades, probs["test"].shape[1]),
                         "seconds": round(time.time() - start, 1)})
            pooled[size].append(pd.DataFrame({"y": y["test"], "score": score["test"], "own": own, "grade": grades}))
            log.info("fold %d at %d px: %s", fold["fold"], size,
                     " ".join(f"{k} {v:.3f}" for k, v in rows[-1].items() if k not in ("fold", "size")))
    k = int(folds[0]["params"].model.num_classes)
    ref_grade = folds[0]["params"].evaluate.referable_grade
    for size, parts in pooled.items():
        t = pd.concat(parts)
        mine = [r for r in rows if r["size"] == size]
        rows.append({"fold": None, "size": size, "val_auc": float(np.mean([r["val_auc"] for r in mine])),
                     "auc": binary_auc(t.y >= ref_grade, t.score), "auc_own": binary_auc(t.y >= ref_grade, t.own),
                     "qwk": quadratic_weighted_kappa(t.y.to_numpy(), t.grade.to_numpy(), k),
                     "seconds": round(sum(r["seconds"] for r in mine), 1)})
    return rows


def resolution_table(rows: list[dict[str, Any]]) -> str:
    folds = sorted({r["fold"] for r in rows if r["fold"] is not None})
    lines = ["| input size | mean val AUC | pooled test AUC | without the blend | pooled test QWK | "
             + " | ".join(f"fold {f}: test AUC, QWK" for f in folds) + " |",
             "|---" * (5 + len(folds)) + "|"]
    for r in (r for r in rows if r["fold"] is None):
        per = {x["fold"]: x for x in rows if x["size"] == r["size"] and x["fold"] is not None}
        lines.append(f"| {r['size']} px | {r['val_auc']:.3f} | {r['auc']:.3f} | {r['auc_own']:.3f} | {r['qwk']:.3f} | "
                     + " | ".join(f"{per[f]['auc']:.3f}, {per[f]['qwk']:.3f}" for f in folds) + " |")
    return "\n".join(lines)


def _pool(x: torch.Tensor) -> list[torch.Tensor]:
    """Average, maximum and generalised mean (p = 3) of each map of a (B, C, H, W) batch."""
    return [x.mean((2, 3)), x.amax((2, 3)), x.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3)]


@torch.no_grad()
def frozen_features(images: np.ndarray, model: torch.nn.Module, batch_size: int = 8) -> dict[str, np.ndarray]:
    """Frozen features of uint8 images (N, S, S, 3), the mean of the photo and its mirror image:
    ``final avg`` (the pooled features a linear probe usually sees) and ``stages`` (average, maximum
    and generalised mean of the last three feature stages, strides 8 to 32, and of the final
    features, concatenated: small lesions may survive a maximum that an average dilutes)."""
    model = model.eval().to(memory_format=torch.channels_last)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalisation(model))
    final_avg, stages = [], []
    for i in tqdm(range(0, len(images), batch_size), desc="frozen features", leave=False):
        x = torch.from_numpy(images[i:i + batch_size]).permute(0, 3, 1, 2).float().div(255).sub(mean).div(std)
        views = []
        for v in (x, torch.flip(x, dims=(3,))):
            last, maps = model.forward_intermediates(v.contiguous(memory_format=torch.channels_last), indices=3)
            views.append([torch.cat([p for t in (*maps, last) for p in _pool(t)], 1), last.mean((2, 3))])
        stages.append(((views[0][0] + views[1][0]) / 2).numpy())
        final_avg.append(((views[0][1] + views[1][1]) / 2).numpy())
    return {"final avg": np.concatenate(final_avg), "stages": np.concatenate(stages)}


def _fit_score(kind: str, x_tr: np.ndarray, y_tr: np.ndarray, groups: np.ndarray, x_te: np.ndarray,
               referable_grade: int) -> tuple[np.ndarray, float, np.ndarray]:
    """Test scores of a ridge (on the grade) or logistic (on referable) model, its penalty chosen by a
    patient-grouped 5-fold search on the training photos for referable AUC; also the chosen penalty
    and that search's out-of-fold scores of the training photos (where a ridge's cut-points are tuned)."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import GroupKFold
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_tr)
    x_tr, x_te = scaler.transform(x_tr), scaler.transform(x_te)
    if kind == "ridge":
        grid, make, target = [1e2, 3e2, 1e3, 3e3, 1e4, 3e4], lambda c: Ridge(alpha=c), y_tr
    else:
        grid = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
        make = lambda c: LogisticRegression(C=c, max_iter=3000, class_weight="balanced")  # noqa: E731
        target = (y_tr >= referable_grade).astype(int)

    def score(m: Any, x: np.ndarray) -> np.ndarray:
        return m.predict(x) if kind == "ridge" else m.decision_function(x)

    best, best_auc, best_inner = grid[0], -1.0, np.zeros(len(y_tr))
    for c in grid:
        inner = np.zeros(len(y_tr))
        for a, b in GroupKFold(5).split(x_tr, y_tr, groups):
            inner[b] = score(make(c).fit(x_tr[a], target[a]), x_tr[b])
        auc = binary_auc(y_tr >= referable_grade, inner)
        if auc > best_auc:
            best, best_auc, best_inner = c, auc, inner
    return score(make(best).fit(x_tr, target), x_te), best, best_inner


def _rank_within(score: np.ndarray, fold: np.ndarray) -> np.ndarray:
    out = np.zeros(len(score))
    for f in np.unique(fold):
        m = fold == f
        out[m] = rankdata(score[m]) / m.sum()
    return out


def probe(folds: list[dict[str, Any]], size: int) -> list[dict[str, Any]]:
    """Pooled out-of-fold referable AUC of linear probes at ``size`` px, alone and rank-averaged with
    the fine-tuned fold models (their blended and own referable scores from ``predictions.csv``)."""
    params: Params = folds[0]["params"]
    ref_grade = params.evaluate.referable_grade
    tested = read_folds([f["results"] / "predictions.csv" for f in folds])
    fold = np.array([folds[k]["fold"] for k in tested["fold"]])  # read_folds numbers the files 0, 1, ...
    # every fold splits the same photos (one seed): train, val and test of the first are all of them
    photos = pd.concat([pd.read_csv(folds[0]["split"] / f"{s}.csv", dtype={"id": str, "patient": str})
                        for s in ("train", "val", "test")], ignore_index=True)
    start = time.time()
    images = load_raw_images(image_paths(photos, _img_dirs(params), folds[0]["split"]),
                             dataclasses.replace(params.preprocess, cache_size=size))
    feats = frozen_features(images, build_model(params.model))
    log.info("frozen features of %d photos at %d px in %.0f s", len(photos), size, time.time() - start)
    row_of = {pid: i for i, pid in enumerate(photos["id"])}
    test_rows = np.array([row_of[i] for i in tested["id"]])
    y, groups = photos["grade"].to_numpy(), photos["patient"].to_numpy()
    num_classes = int(params.model.num_classes)
    probe_scores: dict[tuple[str, str], np.ndarray] = {}
    probe_grades: dict[str, np.ndarray] = {}  # the ridge's grades, at cut-points tuned on its training photos
    for k in (f["fold"] for f in folds):
        te = test_rows[fold == k]
        tr = np.setdiff1d(np.arange(len(photos)), te)
        for name, x in feats.items():
            for kind in ("ridge", "logistic"):
                s, c, inner = _fit_score(kind, x[tr], y[tr], groups[tr], x[te], ref_grade)
                probe_scores.setdefault((name, kind), np.zeros(len(tested)))[fold == k] = s
                if kind == "ridge":
                    cuts = optimize_cutpoints(y[tr], inner, num_classes)
                    probe_grades.setdefault(name, np.zeros(len(tested), dtype=np.int64))[fold == k] = \
                        apply_cutpoints(s, cuts)
                log.info("fold %d, %s, %s: penalty %g, test AUC %.3f", k, name, kind, c,
                         binary_auc(y[te] >= ref_grade, s))
    y_test = y[test_rows]
    y_ref = y_test >= ref_grade
    probs = tested[[c for c in tested.columns if c.startswith("prob_")]].to_numpy()
    own = _rank_within(referable_score(probs, ref_grade), fold)
    blend = _rank_within(tested["referable_score"].to_numpy(), fold)
    qwk = lambda grades: quadratic_weighted_kappa(y_test, grades, num_classes)  # noqa: E731
    rows = [{"size": size, "features": "fine-tuned fold models", "model": "-", "auc": binary_auc(y_ref, own),
             "with_own": None, "with_blend": binary_auc(y_ref, blend), "qwk": qwk(tested["pred_grade"].to_numpy())}]
    for (name, kind), score in probe_scores.items():
        r = _rank_within(score, fold)
        rows.append({"size": size, "features": name, "model": kind, "auc": binary_auc(y_ref, r),
                     "with_own": binary_auc(y_ref, (r + own) / 2), "with_blend": binary_auc(y_ref, (r + blend) / 2),
                     "qwk": qwk(probe_grades[name]) if kind == "ridge" else None})
    return rows


def probe_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| input size | features | model | pooled test AUC | averaged with the fine-tuned model: "
             "without / with its blend | pooled test QWK (cut-points) |", "|---|---|---|---|---|---|"]
    for r in rows:
        both = "-" if r["with_own"] is None else f"{r['with_own']:.3f} / {r['with_blend']:.3f}"
        first = f"{r['auc']:.3f}" + (f" ({r['with_blend']:.3f} with the blend)" if r["with_own"] is None else "")
        qwk = "-" if r.get("qwk") is None else f"{r['qwk']:.3f}"
        lines.append(f"| {r['size']} px | {r['features']} | {r['model']} | {first} | {both} | {qwk} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("check", choices=["resolution", "probe"])
    parser.add_argument("--cv-dir", type=Path, default=Path("cv"), help="the folder cv/dvc.yaml fills")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="the settings it ran with")
    parser.add_argument("--cache-size", type=int, default=640, help="resolution: photos preprocessed at this size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[448, 512, 576, 640], help="resolution: input sizes")
    parser.add_argument("--size", type=int, action="append", help="probe: feature resolution (repeatable; 384)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    too_big = [s for s in args.sizes if s > args.cache_size]
    if args.check == "resolution" and too_big:
        parser.error(f"--sizes {too_big} exceed --cache-size {args.cache_size}: photos would be upsampled")
    try:
        folds = fold_runs(args.cv_dir, load_params(args.params))
    except (ConfigError, FileNotFoundError) as e:
        parser.error(str(e))
    if args.check == "resolution":
        rows = resolution(folds, args.cache_size, args.sizes)
        table = resolution_table(rows)
    else:
        rows = [r for size in (args.size or [384]) for r in probe(folds, size)]
        table = probe_table(rows)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
