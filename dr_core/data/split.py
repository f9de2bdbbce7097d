"""Patient-grouped train/val/test split stratified by source and grade, and the ``split`` stage's work.

The split stage merges the sources that the ``sources`` stage validated (:mod:`dr_core.data.sources`),
finds duplicates across all of them, and splits. Groups (a patient merged with every duplicate group it
touches, in whichever source) are assigned whole. The assignment is a greedy iterative stratification
over strata ``source/grade``: groups holding the rarest strata go first, each to the split that still
lacks that stratum, else to the split furthest below its target count of it; ties go to the split
furthest below its target size. Order among equals comes from a seeded generator, so a seed fixes the
split. With one source the strata are the grades.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from dr_core.config import DataConfig, SplitConfig
from dr_core.data import dedup
from dr_core.data.sources import check_stratifiable, merge_sources, read_sources
from dr_core.runtime.io import write_atomic
from dr_core.training.losses import class_weights  # the weights the train stage uses, logged here per split

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
COLUMNS = ["id", "source", "source_id", "file", "grade", "patient", "group", "digest"]


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


def strata(table: pd.DataFrame, num_classes: int) -> tuple[np.ndarray, int]:
    """Stratum per photograph, ``source * num_classes + grade`` (sources in order of appearance), and
    the number of strata; the grades alone when the table has no ``source``."""
    grades = table["grade"].to_numpy()
    if "source" not in table.columns:
        return grades, num_classes
    codes, names = pd.factorize(table["source"])
    return codes * num_classes + grades, len(names) * num_classes


def make_splits(table: pd.DataFrame, split: SplitConfig, num_classes: int,
                seed: int) -> dict[str, pd.DataFrame]:
    """Train/val/test frames with the ``COLUMNS`` the table has, in table order, and, when
    ``split.train_fraction`` < 1, ``unused``: the training photographs left out. Stratified by
    source and grade (:func:`strata`), grouped by ``group``."""
    labels, n_strata = strata(table, num_classes)
    groups = table["group"].to_numpy()
    rng = np.random.default_rng(seed)
    if split.folds:
        index = assign_folds(labels, groups, split.folds, split.fold, split.val, n_strata, rng)
    else:
        index = assign_splits(labels, groups, (1.0 - split.val - split.test, split.val, split.test), n_strata, rng)
    index = thin_train(index, labels, groups, split.train_fraction, n_strata, rng)
    names = SPLITS + (("unused",) if split.train_fraction < 1.0 else ())
    columns = [c for c in COLUMNS if c in table.columns]
    return {name: table.loc[index == i, columns].reset_index(drop=True) for i, name in enumerate(names)}


def split_summary(splits: dict[str, pd.DataFrame], num_classes: int) -> dict:
    """Per split: photographs, patients, groups, photographs per grade and per source."""
    out = {}
    for name, frame in splits.items():
        counts = np.bincount(frame["grade"], minlength=num_classes)
        out[name] = {"n_images": len(frame), "n_patients": int(frame["patient"].nunique()),
                     "n_groups": int(frame["group"].nunique()),
                     "grade_counts": {str(g): int(c) for g, c in enumerate(counts)}}
        if "source" in frame.columns:
            out[name]["sources"] = {str(k): int(v) for k, v in frame["source"].value_counts(sort=False).items()}
        logger.info("%-5s %5d photographs, %4d patients, grades %s", name, len(frame),
                    out[name]["n_patients"], " ".join(f"{g}:{c}" for g, c in enumerate(counts)))
    return out


def run_split(sources_dir: Path, out_dir: Path, data: DataConfig, split: SplitConfig, num_classes: int,
              seed: int) -> dict:
    """Merge the sources of ``data.sources``, deduplicate across them, split; write the CSVs and reports.

    Reads ``sources_dir/<name>/`` as the sources stage wrote it, for the sources params.yaml lists.
    Writes ``train.csv``, ``val.csv``, ``test.csv`` (``COLUMNS``; also ``unused.csv``, the training
    photographs left out, when ``split.train_fraction`` < 1), ``bad_images.csv`` (every source's),
    ``duplicates.csv`` and ``summary.json``, each atomically.

    Returns:
        The summary also written to ``summary.json``.

    Raises:
        DataError: on any bad input, before anything is written; it names the source.
    """
    out_dir = Path(out_dir)
    sources = read_sources(sources_dir, data)
    good, hashes, signatures, bad = merge_sources(sources)
    exact, near = dedup.find_duplicates(good["digest"].tolist(), hashes, signatures, data.dedup_max_distance)
    duplicates = dedup.duplicate_report(good, exact, near)
    good["group"] = dedup.split_groups(good["patient"], np.concatenate([exact, near]))
    names = ", ".join(repr(s.name) for s in sources)
    check_stratifiable(good["grade"].to_numpy(), good["group"].to_numpy(), num_classes,
                       "patient groups (patients joined by duplicates)", f"source{'s' * (len(sources) > 1)} {names}")
    for source in sources:
        mine = good["source"] == source.name
        check_stratifiable(good.loc[mine, "grade"].to_numpy(), good.loc[mine, "group"].to_numpy(), num_classes,
                           "patient groups (patients joined by duplicates)",
                           f"source {source.name!r} ({source.summary['settings']['labels_csv']})", present_only=True)

    splits = make_splits(good, split, num_classes, seed)
    unused = splits.pop("unused", None)
    if unused is not None:
        logger.info("split.train_fraction %g: %d of %d training photographs kept (%d of %d patient groups); "
                    "the other %d are in no split (unused.csv)", split.train_fraction, len(splits["train"]),
                    len(splits["train"]) + len(unused), splits["train"]["group"].nunique(),
                    splits["train"]["group"].nunique() + unused["group"].nunique(), len(unused))
    weights = class_weights(splits["train"]["grade"].to_numpy(), num_classes)
    logger.info("class weights (train): %s", " ".join(f"{g}:{w:.3f}" for g, w in enumerate(weights)))
    across = duplicates.groupby("group")["source"].nunique() if len(duplicates) else pd.Series(dtype=int)
    summary = {
        "n_rows": sum(s.summary["n_rows"] for s in sources), "n_images": len(good), "n_bad": len(bad),
        "n_patients": int(good["patient"].nunique()), "n_groups": int(good["group"].nunique()),
        "n_duplicate_groups": int(duplicates["group"].nunique()),
        "n_duplicate_images": len(duplicates), "n_exact_pairs": len(exact), "n_near_pairs": len(near),
        "n_cross_source_duplicate_groups": int((across > 1).sum()),
        "class_weights": {str(g): round(float(w), 6) for g, w in enumerate(weights)},
        "sources": {s.name: {key: s.summary[key] for key in ("layout", "id_col", "label_col", "patient_source",
                                                              "n_rows", "n_images", "n_bad", "n_patients")}
                    for s in sources},
        "splits": split_summary(splits, num_classes),
    }
    if split.folds:
        summary.update(folds=split.folds, test_fold=split.fold)
    if unused is not None:
        summary.update(train_fraction=split.train_fraction, n_train_unused=len(unused))
    logger.info("%d photographs kept from %d source(s), %d bad, %d duplicate groups (%d exact, %d near pairs; "
                "%d across sources)", len(good), len(sources), len(bad), summary["n_duplicate_groups"], len(exact),
                len(near), summary["n_cross_source_duplicate_groups"])

    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {**splits, "bad_images": bad, "duplicates": duplicates}
    if unused is not None:
        tables["unused"] = unused
    else:
        (out_dir / "unused.csv").unlink(missing_ok=True)  # from an earlier run with a fraction
    for name, frame in tables.items():
        write_atomic(out_dir / f"{name}.csv", lambda p, f=frame: f.to_csv(p, index=False))
    write_atomic(out_dir / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"))
    return summary
