"""Several labelled sources in one pipeline: each validated on its own, then read back for the split.

The ``sources`` stage runs once per entry of ``data.sources`` (:func:`ingest_source`) and writes
``data/sources/<name>/``: ``photos.csv`` (one usable photograph per row: ``id, line, grade, patient,
file, digest, phash``), ``signatures.npy`` (their near-duplicate signatures, row for row),
``bad_images.csv`` and ``summary.json``. The split stage reads back the sources that params.yaml lists
(:func:`read_sources`), whatever stale folders of removed sources lie beside them. Every error names
its source: ``source 'odir': ...``.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from dr_core.config import GRADE_NAMES, DataConfig, SourceConfig
from dr_core.data import ingest
from dr_core.data.ingest import DataError
from dr_core.runtime.io import write_atomic

logger = logging.getLogger(__name__)

PHOTO_COLUMNS = ["id", "line", "grade", "patient", "file", "digest", "phash"]
BAD_COLUMNS = ["id", "line", "file", "reason"]
MIN_UNITS = 3  # patients per grade: one for each of train, val and test


def grade_name(grade: int, num_classes: int) -> str:
    return f"grade {grade} ({GRADE_NAMES[grade]})" if num_classes == len(GRADE_NAMES) else f"grade {grade}"


def check_stratifiable(grades: np.ndarray, units: np.ndarray, num_classes: int, what: str, where: Any,
                       present_only: bool = False) -> None:
    """Raise unless every grade has photographs from at least ``MIN_UNITS`` ``what`` (one per split).

    With ``present_only`` (one source of several), a grade with no photograph at all is fine: the other
    sources may hold it.
    """
    per_grade = pd.Series(units).groupby(np.asarray(grades)).nunique()
    for grade in range(num_classes):
        count = int(per_grade.get(grade, 0))
        if count >= MIN_UNITS or (present_only and count == 0):
            continue
        fix = (f"Relabel or remove its photographs of grade {grade}, or add photographs of "
               "more patients" if present_only else
               f"Merge grade {grade} into a neighbouring grade (relabel the CSV and lower model.num_classes if it "
               "is the last grade) or add photographs of more patients")
        raise DataError(
            f"{where}: {grade_name(grade, num_classes)} has photographs from {count} {what}; a stratified "
            f"train/val/test split needs at least {MIN_UNITS} (one per split){' or none' * present_only}. {fix}")


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


def source_settings(source: SourceConfig, data: DataConfig) -> dict[str, Any]:
    """What a source's folder was made from: its paths and the settings it was read with."""
    resolved = source.resolved(data)
    return {"labels_csv": source.labels_csv, "img_dir": source.img_dir, "id_col": resolved.id_col,
            "label_col": resolved.label_col, "patient": resolved.patient, "on_bad_image": resolved.on_bad_image,
            "max_bad_fraction": resolved.max_bad_fraction}


def ingest_source(name: str, source: SourceConfig, data: DataConfig, num_classes: int, out_dir: Path,
                  workers: int = 0) -> dict[str, Any]:
    """Validate one source (labels, files, image checks, fingerprints) and write ``out_dir`` (see the module).

    Raises:
        DataError: on any bad input, its message starting ``source '<name>': ``; nothing is written.
    """
    settings = source.resolved(data)
    csv, img_dir, out_dir = Path(source.labels_csv), Path(source.img_dir), Path(out_dir)
    try:
        labels = ingest.read_labels(csv, settings, num_classes)
        check_stratifiable(labels.table["grade"].to_numpy(), labels.table["patient"].to_numpy(), num_classes,
                           "patients", csv, present_only=True)
        good, checks, bad = usable_photographs(labels.table, img_dir, settings, csv, workers)
    except DataError as err:
        raise DataError(f"source {name!r}: {err}") from None
    photos = good.assign(digest=[c.digest for c in checks], phash=[f"{c.phash:016x}" for c in checks])
    summary = {"source": name, "settings": source_settings(source, data), "layout": labels.layout,
               "id_col": labels.id_col, "label_col": labels.label_col, "patient_source": labels.patient_source,
               "n_rows": len(labels.table), "n_images": len(photos), "n_bad": len(bad),
               "n_patients": int(photos["patient"].nunique())}
    logger.info("source %r: %d of %d photographs usable, %d patients (%s layout, patients from %s)", name,
                len(photos), len(labels.table), summary["n_patients"], labels.layout, labels.patient_source)
    out_dir.mkdir(parents=True, exist_ok=True)
    signatures = np.stack([c.signature for c in checks])  # (N, D) float16
    write_atomic(out_dir / "photos.csv", lambda p: photos[PHOTO_COLUMNS].to_csv(p, index=False))
    write_atomic(out_dir / "signatures.npy", lambda p: _save_npy(p, signatures))
    write_atomic(out_dir / "bad_images.csv", lambda p: bad[BAD_COLUMNS].to_csv(p, index=False))
    write_atomic(out_dir / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"))
    return summary


def _save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as fh:  # np.save given a name would append ".npy" to the temporary one
        np.save(fh, array)


@dataclass(frozen=True)
class Source:
    """One source as the sources stage wrote it."""

    name: str
    photos: pd.DataFrame  # PHOTO_COLUMNS, one usable photograph per row
    signatures: np.ndarray  # (N, D) float16, row for row
    bad: pd.DataFrame  # BAD_COLUMNS
    summary: dict[str, Any]


def read_sources(sources_dir: Path, data: DataConfig) -> list[Source]:
    """The sources of ``data.sources``, in their order, from ``sources_dir/<name>/``.

    Raises:
        DataError: a source's folder is missing or was made from other paths or settings than
            params.yaml's (the sources stage has not run since they changed).
    """
    sources_dir = Path(sources_dir)
    out = []
    for name, source in data.sources.items():
        folder = sources_dir / name
        if not (folder / "summary.json").is_file():
            raise DataError(f"source {name!r}: {folder} not found or incomplete: the sources@{name} stage has not "
                            f"run. Run `dvc repro` (or `python -m stages.sources --source {name} --out {folder}`)")
        summary = json.loads((folder / "summary.json").read_text())
        expected = source_settings(source, data)
        if summary.get("settings") != expected:
            changed = sorted(k for k in expected if summary.get("settings", {}).get(k) != expected[k])
            raise DataError(f"source {name!r}: {folder} was made with other settings than params.yaml's "
                            f"({', '.join(changed)}); run `dvc repro` to validate the source again")
        photos = pd.read_csv(folder / "photos.csv", dtype={c: str for c in PHOTO_COLUMNS if c not in ("line", "grade")},
                             keep_default_na=False)
        signatures = np.load(folder / "signatures.npy")
        if len(signatures) != len(photos):
            raise DataError(f"source {name!r}: {folder}: {len(signatures)} signatures for {len(photos)} photographs; "
                            f"run `dvc repro -f sources@{name}`")
        bad = pd.read_csv(folder / "bad_images.csv", dtype=str, keep_default_na=False)
        out.append(Source(name, photos, signatures, bad, summary))
    stale = sorted(p.name for p in sources_dir.iterdir() if p.is_dir() and p.name not in data.sources) \
        if sources_dir.is_dir() else []
    if stale:
        logger.info("%s: ignoring %s, not in data.sources (left from an earlier run)", sources_dir, ", ".join(stale))
    return out


def merge_sources(sources: list[Source]) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, pd.DataFrame]:
    """All sources' photographs in one table, ids and patients namespaced by source.

    Returns:
        The photographs (``id`` = ``<source>/<id>``, ``source``, ``source_id`` (the id in its CSV),
        ``file``, ``grade``, ``patient`` = ``<source>/<patient>``, ``digest``), their (N,) uint64
        perceptual hashes and (N, D) signatures, and the bad photographs (``source`` and BAD_COLUMNS).
    """
    frames, bad = [], []
    for source in sources:
        photos = source.photos
        frames.append(pd.DataFrame({
            "id": source.name + "/" + photos["id"], "source": source.name, "source_id": photos["id"],
            "file": photos["file"], "grade": photos["grade"].astype(int),
            "patient": source.name + "/" + photos["patient"], "digest": photos["digest"], "phash": photos["phash"]}))
        bad.append(source.bad.assign(source=source.name)[["source", *BAD_COLUMNS]])
    table = pd.concat(frames, ignore_index=True)
    hashes = np.array([int(h, 16) for h in table.pop("phash")], dtype=np.uint64)
    signatures = np.concatenate([s.signatures for s in sources])
    return table, hashes, signatures, pd.concat(bad, ignore_index=True)


TRAINING_SPLITS = ("train", "val", "test", "unused")  # every photograph the model was developed on


def training_photos(split_dir: Path, sources: Mapping[str, SourceConfig]) -> pd.DataFrame:
    """The photographs of the split (``id``, ``digest`` and ``path``, the file's absolute, symlink-free path),
    for telling an external set apart from them."""
    frames = []
    for split in TRAINING_SPLITS:
        csv = Path(split_dir) / f"{split}.csv"
        if not csv.is_file():
            continue
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
        if not {"source", "file", "digest"} <= set(table.columns):
            raise DataError(f"{csv}: no source, file and digest columns (columns: {list(table.columns)}); "
                            "rerun the split stage (dvc repro)")
        unknown = sorted(set(table["source"]) - set(sources))
        if unknown:
            raise DataError(f"{csv}: photographs of source(s) {unknown}, which data.sources does not list; "
                            "rerun the split stage (dvc repro)")
        paths = [os.path.realpath(Path(sources[s].img_dir) / f) for s, f in zip(table["source"], table["file"])]
        frames.append(table[["id", "digest"]].assign(path=paths))
    if not frames:
        raise DataError(f"{split_dir}: no split CSVs; run the split stage first (dvc repro split)")
    return pd.concat(frames, ignore_index=True)


def refuse_shared_photos(rows: pd.DataFrame, img_dir: Path, training: pd.DataFrame, labels_csv: Path) -> None:
    """Raise if any photograph of ``rows`` (``id, line, file, digest``, files in ``img_dir``) is one of
    ``training``'s: the same bytes, or the same file."""
    by_digest = dict(zip(training["digest"], training["id"]))
    by_path = dict(zip(training["path"], training["id"]))
    shared = []
    for row in rows.itertuples():
        path = os.path.realpath(Path(img_dir) / row.file)
        if path in by_path:
            shared.append(f"line {row.line}: {row.id!r} is the file of {by_path[path]}")
        elif row.digest in by_digest:
            shared.append(f"line {row.line}: {row.id!r} has the content of {by_digest[row.digest]}")
    if shared:
        raise DataError(f"{labels_csv}: {len(shared)} of {len(rows)} photographs are also in the training data "
                        f"(the split of data.sources): {ingest.listing(shared)}. An external test must hold "
                        "other photographs than the ones the model was developed on; remove these rows")
