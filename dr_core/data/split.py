"""Patient-grouped, grade-stratified train/val/test split, and the ``split`` stage's work.

Groups (a patient merged with every duplicate group it touches) are assigned whole.
The assignment is a greedy iterative stratification: groups holding the rarest grades
go first, each to the split that still lacks that grade, else to the split furthest
below its target count of that grade; ties go to the split furthest below its target
size. Order among equals comes from a seeded generator, so a seed fixes the split.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from dr_core.data import dedup, ingest
from dr_core.config import GRADE_NAMES, DataConfig, SplitConfig
from dr_core.data.ingest import DataError
from dr_core.runtime.io import write_atomic
from dr_core.training.losses import class_weights  # the weights the train stage uses, logged here per split

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
COLUMNS = ["id", "file", "grade", "patient", "group"]


def grade_name(grade: int, num_classes: int) -> str:
    return f"grade {grade} ({GRADE_NAMES[grade]})" if num_classes == len(GRADE_NAMES) else f"grade {grade}"


def check_stratifiable(grades: np.ndarray, units: np.ndarray, num_classes: int, what: str,
                       where: Path) -> None:
    """Raise unless every grade has photographs from at least one ``what`` per split."""
    per_grade = pd.Series(units).groupby(np.asarray(grades)).nunique()
    for grade in range(num_classes):
        count = int(per_grade.get(grade, 0))
        if count < len(SPLITS):
            raise DataError(
                f"{where}: {grade_name(grade, num_classes)} has photographs from {count} {what}; a "
                f"stratified {'/'.join(SPLITS)} split needs at least {len(SPLITS)} (one per split). "
                f"Merge grade {grade} into a neighbouring grade (relabel the CSV and lower "
                "model.num_classes if it is the last grade) or add photographs of more patients")


def assign_splits(grades: np.ndarray, groups: np.ndarray, fractions: tuple[float, float, float],
                  num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) per photograph; a group never straddles splits.

    Args:
        grades: (N,) int grade per photograph.
        groups: (N,) int group label per photograph, 0..G-1.
        fractions: target share of photographs per split, summing to 1.
        num_classes: number of grades.
        rng: source of the tie-breaking order.
    """
    n_groups = int(groups.max()) + 1
    counts = np.zeros((n_groups, num_classes), dtype=np.int64)  # (G, C)
    np.add.at(counts, (groups, grades), 1)
    totals = counts.sum(axis=0)  # (C,)
    target = np.outer(fractions, totals)  # (S, C)
    # Key grade of a group: its rarest grade overall.
    rarity = np.where(counts > 0, totals[None, :], np.iinfo(np.int64).max)
    key = rarity.argmin(axis=1)
    shuffled = rng.permutation(n_groups)
    order = shuffled[np.lexsort((-counts[shuffled].sum(axis=1), totals[key[shuffled]]))]

    have = np.zeros_like(target)  # (S, C)
    chosen = np.empty(n_groups, dtype=np.int64)
    for g in order:
        k = key[g]
        candidates = np.flatnonzero(have[:, k] == 0)
        if candidates.size == 0:
            candidates = np.arange(len(fractions))
        need = target[candidates, k] - have[candidates, k]
        need_total = target[candidates].sum(axis=1) - have[candidates].sum(axis=1)
        best = candidates[np.lexsort((-need_total, -need))[0]]
        chosen[g] = best
        have[best] += counts[g]
    return chosen[groups]


def assign_folds(grades: np.ndarray, groups: np.ndarray, folds: int, fold: int, val: float,
                 num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Split index per photograph (0 train, 1 val, 2 test) where test is fold ``fold`` of ``folds``.

    The fold assignment draws first from ``rng``, so it is the same for every ``fold``; val
    (``val`` of all photographs) and train are then assigned among the other folds' groups.
    """
    in_fold = assign_splits(grades, groups, (1.0 / folds,) * folds, num_classes, rng)
    index = np.full(len(grades), 2, dtype=np.int64)
    rest = in_fold != fold
    rest_groups = np.unique(groups[rest], return_inverse=True)[1]  # renumbered 0..G'-1
    share = val / (1.0 - 1.0 / folds)
    index[rest] = assign_splits(grades[rest], rest_groups, (1.0 - share, share), num_classes, rng)
    return index


UNUSED = len(SPLITS)  # split index of training photographs left out by ``split.train_fraction``


def thin_train(index: np.ndarray, grades: np.ndarray, groups: np.ndarray, fraction: float, num_classes: int,
               rng: np.random.Generator) -> np.ndarray:
    """``index`` with all but a stratified ``fraction`` of the training groups marked ``UNUSED``.

    Val and test keep their photographs; the training groups are cut by the same greedy
    stratification as the splits, drawing from ``rng`` after them, so the kept share is the only
    thing that changes with the fraction.
    """
    if fraction >= 1.0:
        return index
    train = index == 0
    train_groups = np.unique(groups[train], return_inverse=True)[1]
    part = assign_splits(grades[train], train_groups, (fraction, 1.0 - fraction), num_classes, rng)
    out = index.copy()
    out[np.flatnonzero(train)[part == 1]] = UNUSED
    return out


def make_splits(table: pd.DataFrame, split: SplitConfig, num_classes: int,
                seed: int) -> dict[str, pd.DataFrame]:
    """Train/val/test frames with columns ``id,file,grade,patient,group``, in CSV order, and, when
    ``split.train_fraction`` < 1, ``unused``: the training photographs left out."""
    grades, groups = table["grade"].to_numpy(), table["group"].to_numpy()
    rng = np.random.default_rng(seed)
    if split.folds:
        index = assign_folds(grades, groups, split.folds, split.fold, split.val, num_classes, rng)
    else:
        index = assign_splits(grades, groups, (1.0 - split.val - split.test, split.val, split.test),
                              num_classes, rng)
    index = thin_train(index, grades, groups, split.train_fraction, num_classes, rng)
    names = SPLITS + (("unused",) if split.train_fraction < 1.0 else ())
    return {name: table.loc[index == i, COLUMNS].reset_index(drop=True) for i, name in enumerate(names)}


def split_summary(splits: dict[str, pd.DataFrame], num_classes: int) -> dict:
    """Per split: photographs, patients, groups and photographs per grade."""
    out = {}
    for name, frame in splits.items():
        counts = np.bincount(frame["grade"], minlength=num_classes)
        out[name] = {"n_images": len(frame), "n_patients": int(frame["patient"].nunique()),
                     "n_groups": int(frame["group"].nunique()),
                     "grade_counts": {str(g): int(c) for g, c in enumerate(counts)}}
        logger.info("%-5s %5d photographs, %4d patients, grades %s", name, len(frame),
                    out[name]["n_patients"], " ".join(f"{g}:{c}" for g, c in enumerate(counts)))
    return out


def run_split(labels_csv: Path, img_dir: Path, out_dir: Path, data: DataConfig, split: SplitConfig,
              num_classes: int, seed: int, workers: int = 0) -> dict:
    """Validate, deduplicate and split; write the split CSVs and reports to ``out_dir``.

    Writes ``train.csv``, ``val.csv``, ``test.csv`` (``id,file,grade,patient,group``; also
    ``unused.csv``, the training photographs left out, when ``split.train_fraction`` < 1),
    ``bad_images.csv``, ``duplicates.csv`` and ``summary.json``, each atomically.

    Args:
        workers: processes for the image checks; 0 uses all cores.

    Returns:
        The summary also written to ``summary.json``.

    Raises:
        DataError: on any bad input, before anything is written.
    """
    labels_csv, img_dir, out_dir = Path(labels_csv), Path(img_dir), Path(out_dir)
    labels = ingest.read_labels(labels_csv, data, num_classes)
    table = labels.table.copy()
    check_stratifiable(table["grade"].to_numpy(), table["patient"].to_numpy(), num_classes,
                       "patients", labels_csv)
    good, checks, bad = usable_photographs(table, img_dir, data, labels_csv, workers)

    exact, near = dedup.find_duplicates([c.digest for c in checks],
                                        np.array([c.phash for c in checks], dtype=np.uint64),
                                        np.stack([c.signature for c in checks]), data.dedup_max_distance)
    duplicates = dedup.duplicate_report(good, exact, near)
    good["group"] = dedup.split_groups(good["patient"], np.concatenate([exact, near]))
    check_stratifiable(good["grade"].to_numpy(), good["group"].to_numpy(), num_classes,
                       "patient groups (patients joined by duplicates)", labels_csv)

    splits = make_splits(good, split, num_classes, seed)
    unused = splits.pop("unused", None)
    if unused is not None:
        logger.info("split.train_fraction %g: %d of %d training photographs kept (%d of %d patient groups); "
                    "the other %d are in no split (unused.csv)", split.train_fraction, len(splits["train"]),
                    len(splits["train"]) + len(unused), splits["train"]["group"].nunique(),
                    splits["train"]["group"].nunique() + unused["group"].nunique(), len(unused))
    weights = class_weights(splits["train"]["grade"].to_numpy(), num_classes)
    logger.info("class weights (train): %s", " ".join(f"{g}:{w:.3f}" for g, w in enumerate(weights)))
    summary = {
        "layout": labels.layout, "id_col": labels.id_col, "label_col": labels.label_col,
        "patient_source": labels.patient_source, "n_rows": len(table), "n_images": len(good),
        "n_bad": len(bad), "n_patients": int(good["patient"].nunique()),
        "n_groups": int(good["group"].nunique()),
        "n_duplicate_groups": int(duplicates["group"].nunique()),
        "n_duplicate_images": len(duplicates), "n_exact_pairs": len(exact), "n_near_pairs": len(near),
        "class_weights": {str(g): round(float(w), 6) for g, w in enumerate(weights)},
        "splits": split_summary(splits, num_classes),
    }
    if split.folds:
        summary.update(folds=split.folds, test_fold=split.fold)
    if unused is not None:
        summary.update(train_fraction=split.train_fraction, n_train_unused=len(unused))
    logger.info("%d photographs kept, %d bad, %d duplicate groups (%d exact, %d near pairs)",
                len(good), len(bad), summary["n_duplicate_groups"], len(exact), len(near))

    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {**splits, "bad_images": bad[["id", "file", "reason"]], "duplicates": duplicates}
    if unused is not None:
        tables["unused"] = unused
    else:
        (out_dir / "unused.csv").unlink(missing_ok=True)  # from an earlier run with a fraction
    for name, frame in tables.items():
        write_atomic(out_dir / f"{name}.csv", lambda p, f=frame: f.to_csv(p, index=False))
    write_atomic(out_dir / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"))
    return summary


def usable_photographs(table: pd.DataFrame, img_dir: Path, data: DataConfig, labels_csv: Path,
                        workers: int) -> tuple[pd.DataFrame, list[ingest.ImageCheck], pd.DataFrame]:
    """Find and check every photograph; apply ``data.on_bad_image``.

    Returns:
        The usable rows (with ``file``), their checks in the same order, and the bad rows
        (with ``file``, ``""`` when missing, and ``reason``).
    """
    table = table.assign(file=ingest.find_image_files(table["id"], img_dir).to_numpy())
    missing = table[table["file"] == ""]
    if len(missing) and (data.on_bad_image == "error" or len(missing) / len(table) > data.max_bad_fraction):
        raise DataError(ingest.missing_files_message(missing, len(table), img_dir, labels_csv))
    present = table[table["file"] != ""]
    checks = ingest.check_images([str(img_dir / f) for f in present["file"]], workers)
    reasons = pd.Series("missing file", index=table.index)
    reasons[present.index] = [c.reason for c in checks]
    bad = table.assign(reason=reasons)[reasons != ""]
    ingest.enforce_bad_image_policy(bad, len(table), data, labels_csv)
    usable = [not c.reason for c in checks]
    if not any(usable):
        raise DataError(f"{labels_csv}: none of the {len(table)} photographs is usable; "
                        "see the reasons above")
    return present[usable].reset_index(drop=True), [c for c in checks if not c.reason], bad
