"""Read a labels CSV and its image folder, catching bad data before any work.

Two layouts are recognised: APTOS (``id_code,diagnosis``, ``<id>.png``) and EyePACS
(``image,level``, ``<id>.jpeg``); any other pair of columns can be named in params.
Every error is a :class:`DataError` that names the file, the CSV line (the header is
line 1, so data row i is line i + 2), the offending value and the fix.
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from dr_core.config import DataConfig, InputError
from dr_core.data.dedup import fingerprint
from dr_core.runtime.workers import pool_context, resolve_workers
from dr_core.runtime.progress import progress

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpeg", ".jpg", ".tif", ".tiff", ".bmp")
MAX_DECODE_PIXELS = 2**30  # OpenCV's default CV_IO_MAX_IMAGE_PIXELS
LAYOUTS = {("id_code", "diagnosis"): "aptos", ("image", "level"): "eyepacs"}
ID_COLUMNS = ("id_code", "image")
LABEL_COLUMNS = ("diagnosis", "level")
PATIENT_COLUMNS = ("patient_id", "patient")
EYEPACS_ID = r"(\d+)_(?:left|right)"  # 10_left -> patient 10
# An id may name the file itself (10_left.jpeg): the extension is no part of the EyePACS pattern.
KNOWN_EXTENSION = re.compile("(?:" + "|".join(re.escape(e) for e in IMAGE_EXTENSIONS) + ")$", re.IGNORECASE)
INTEGER = r"[+-]?\d+(?:\.0*)?"  # "2" and "2.0" are grades, "2.5" is not
MAX_LISTED = 10

# Image checks run on a reduced decode whose shorter side is at least WORK_MIN_SIDE.
WORK_MIN_SIDE = 128
DARK_LEVEL = 10  # gray level of the black border, with JPEG noise
MIN_FUNDUS_FRACTION = 0.05  # EyePACS dev set: lowest usable photo 0.36, an all-dark one 0.015
MIN_GRAY_STD = 5.0  # EyePACS dev set: lowest usable photo 7.4
MAX_GRAY_SPREAD = 2.0  # mean max-min over channels inside the fundus; colour photos: >= 6
_REDUCED = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4,
            2: cv2.IMREAD_REDUCED_COLOR_2, 1: cv2.IMREAD_COLOR}


class DataError(InputError, ValueError):
    """The labels CSV or the image folder holds something the pipeline cannot use."""


@dataclass(frozen=True)
class Labels:
    """A validated labels CSV.

    Attributes:
        table: one row per photograph, columns ``id, grade, patient, line`` (CSV line).
        layout: ``aptos``, ``eyepacs`` or ``custom``.
        patient_source: ``eyepacs``, ``none`` or ``column:<name>``.
    """

    table: pd.DataFrame
    layout: str
    id_col: str
    label_col: str
    patient_source: str


def listing(items: list[str], limit: int = MAX_LISTED) -> str:
    """``a; b; c`` with at most ``limit`` items and a count of the rest."""
    shown = "; ".join(items[:limit])
    return shown + (f"; ... and {len(items) - limit} more" if len(items) > limit else "")


def read_labels(csv_path: Path, data: DataConfig, num_classes: int) -> Labels:
    """Read and validate the labels CSV: columns, grades, ids and patients."""
    frame = _read_csv(csv_path)
    id_col = _pick_column(frame, data.id_col, ID_COLUMNS, "data.id_col", "image id", csv_path)
    label_col = _pick_column(frame, data.label_col, LABEL_COLUMNS, "data.label_col", "grade", csv_path)
    ids = frame[id_col]
    _check_ids(ids, id_col, csv_path)
    grades = _parse_grades(frame[label_col], label_col, num_classes, csv_path)
    patients, source = _patients(frame, ids, data.patient, csv_path)
    table = pd.DataFrame({"id": ids.to_numpy(), "grade": grades.to_numpy(),
                          "patient": patients.to_numpy(), "line": frame.index.to_numpy()})
    layout = LAYOUTS.get((id_col.lower(), label_col.lower()), "custom")
    logger.info("%s: %d photographs, layout %s (%s, %s), patients from %s, %d patients",
                csv_path, len(table), layout, id_col, label_col, source, table["patient"].nunique())
    return Labels(table, layout, id_col, label_col, source)


def _read_csv(csv_path: Path) -> pd.DataFrame:
    """All cells as stripped strings, indexed by CSV line number, blank lines dropped."""
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: labels CSV not found (looked at {csv_path.resolve()}); "
                        "check --labels-csv, or the source's labels_csv (data.sources.<name>.labels_csv)")
    rows, lines = [], []
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [name.strip() for name in next(reader, [])]
            for row in reader:
                if any(cell.strip() for cell in row):
                    rows.append([cell.strip() for cell in row])
                    lines.append(reader.line_num)
                    if len(row) != len(header):
                        raise DataError(f"{csv_path}: line {reader.line_num} has {len(row)} fields but the "
                                        f"header has {len(header)} ({', '.join(header)}); fix stray or "
                                        "missing commas on that line")
    except (csv.Error, UnicodeDecodeError) as err:
        raise DataError(f"{csv_path}: not a readable CSV ({err}); save it as UTF-8 CSV with one "
                        "row per photograph") from None
    if not any(header):
        raise DataError(f"{csv_path} is empty; expected a header such as 'image,level' (EyePACS) or "
                        "'id_code,diagnosis' (APTOS) and one row per photograph")
    if len(set(header)) != len(header):
        raise DataError(f"{csv_path}: the header repeats a column name ({', '.join(header)}); "
                        "give every column its own name")
    if not rows:
        raise DataError(f"{csv_path} has a header ({', '.join(header)}) but no data rows; "
                        "add one row per photograph")
    return pd.DataFrame(rows, columns=header, index=lines, dtype=object)


def _pick_column(frame: pd.DataFrame, wanted: str, auto: tuple[str, ...], setting: str,
                 what: str, csv_path: Path) -> str:
    found = list(frame.columns)
    if wanted != "auto":
        if wanted in found:
            return wanted
        raise DataError(f"{csv_path}: column {wanted!r} ({setting}) not found; columns found: "
                        f"{found}. Set {setting} to one of them")
    lower = {c.lower(): c for c in found}
    for name in auto:
        if name in lower:
            return lower[name]
    raise DataError(f"{csv_path}: no {what} column; looked for {' or '.join(map(repr, auto))}, "
                    f"columns found: {found}. Set {setting} in params.yaml to the right column")


def _rows(values: pd.Series) -> list[str]:
    return [f"line {line}: {value!r}" for line, value in values.items()]


def _check_ids(ids: pd.Series, col: str, csv_path: Path) -> None:
    empty = ids[ids == ""]
    if len(empty):
        raise DataError(f"{csv_path}: {len(empty)} row(s) have an empty {col!r}: "
                        f"{listing(_rows(empty))}. Fill in the image id or remove the row")
    unsafe = ids[ids.str.contains(r"[/\\\x00]") | ids.isin([".", ".."]) | ids.map(os.path.isabs)]
    if len(unsafe):
        raise DataError(f"{csv_path}: {len(unsafe)} id(s) in {col!r} are not plain file names: "
                        f"{listing(_rows(unsafe))}. Ids must name a file inside the image folder "
                        "(no '/', '\\', '..' or absolute paths)")
    repeated = ids[ids.duplicated(keep=False)]
    if len(repeated):
        lines = repeated.groupby(repeated, sort=False).apply(lambda s: ", ".join(map(str, s.index)))
        items = [f"{value!r} on lines {where}" for value, where in lines.items()]
        raise DataError(f"{csv_path}: {len(lines)} id(s) in {col!r} appear more than once: "
                        f"{listing(items)}. List each photograph once")


def _parse_grades(values: pd.Series, col: str, num_classes: int, csv_path: Path) -> pd.Series:
    numeric = pd.to_numeric(values.where(values.str.fullmatch(INTEGER)), errors="coerce")
    bad = values[~numeric.between(0, num_classes - 1)]
    if len(bad):
        raise DataError(f"{csv_path}: {col!r} must hold integer grades 0..{num_classes - 1}; "
                        f"{len(bad)} row(s) do not: {listing(_rows(bad))}. Correct or remove these rows "
                        "(or set model.num_classes if your scale has more grades)")
    return numeric.astype(int)


def eyepacs_patients(ids: pd.Series) -> pd.Series:
    """The patient number of each EyePACS id (``10_left`` and ``10_left.jpeg`` -> ``10``), NaN where the
    id does not follow the pattern."""
    stems = ids.str.replace(KNOWN_EXTENSION, "", regex=True)
    return stems.str.extract(f"^{EYEPACS_ID}$", flags=re.IGNORECASE, expand=False)


def _patients(frame: pd.DataFrame, ids: pd.Series, source: str,
              csv_path: Path) -> tuple[pd.Series, str]:
    """Patient per photograph and where it came from (see ``DataConfig.patient``).

    ``auto`` takes a patient column, else EyePACS ids when every id follows the pattern. When most do and
    some do not, it stops: one patient per photograph would put the two eyes of a patient in different
    splits without a word.
    """
    if source == "auto":
        column = next((c for c in frame.columns if c.lower() in PATIENT_COLUMNS), None)
        number = eyepacs_patients(ids)
        stray = ids[number.isna()]
        if column is not None:
            source = column
        elif stray.empty:
            source = "eyepacs"
        elif len(stray) < len(ids) / 2:
            raise DataError(f"{csv_path}: {len(ids) - len(stray)} of {len(ids)} ids are EyePACS ids "
                            f"('<number>_left' or '<number>_right', which give the patient) but {len(stray)} are "
                            f"not: {listing(_rows(stray))}. Correct these ids, or set data.patient to a patient "
                            "column, or to 'none' (one patient per photograph: both eyes of a patient may then "
                            "land in different splits)")
        else:
            if len(stray) < len(ids):
                logger.warning("%s: only %d of %d ids are EyePACS ids (<number>_left/_right); one patient per "
                               "photograph. Set data.patient if the photographs share patients", csv_path,
                               len(ids) - len(stray), len(ids))
            source = "none"
    if source == "none":
        return ids, "none"
    if source == "eyepacs":
        number = eyepacs_patients(ids)
        bad = ids[number.isna()]
        if len(bad):
            raise DataError(f"{csv_path}: data.patient is 'eyepacs' but {len(bad)} id(s) are not "
                            f"'<number>_left' or '<number>_right': {listing(_rows(bad))}. Set "
                            "data.patient to a patient column, or to 'none' (one patient per photograph)")
        return number, "eyepacs"
    if source not in frame.columns:
        raise DataError(f"{csv_path}: patient column {source!r} (data.patient) not found; columns "
                        f"found: {list(frame.columns)}. Use one of them, 'eyepacs', 'none' or 'auto'")
    empty = frame.loc[frame[source] == "", source]
    if len(empty):
        raise DataError(f"{csv_path}: {len(empty)} row(s) have an empty {source!r}: "
                        f"{listing([f'line {line}' for line in empty.index])}. Fill in the patient")
    return frame[source], f"column:{source}"


def find_image_files(ids: pd.Series, img_dir: Path) -> pd.Series:
    """File name inside ``img_dir`` for each id, ``""`` where there is none.

    One directory listing; the extension is matched case-insensitively, and an id that
    already carries an image extension is taken as the file name.
    """
    if not img_dir.is_dir():
        raise DataError(f"{img_dir}: image folder not found (looked at {img_dir.resolve()}); "
                        "check --img-dir, or the source's img_dir (data.sources.<name>.img_dir)")
    by_stem: dict[str, list[str]] = {}
    linked_out: list[str] = []
    root = img_dir.resolve()
    with os.scandir(img_dir) as entries:
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() in IMAGE_EXTENSIONS and entry.is_file():
                by_stem.setdefault(stem, []).append(entry.name)
                by_stem.setdefault(entry.name, []).append(entry.name)
                if entry.is_symlink() and root not in Path(entry.path).resolve().parents:
                    linked_out.append(f"{entry.name} -> {Path(entry.path).resolve()}")
    if linked_out:  # allowed (a shared photo store), but never unnoticed
        logger.warning("%s: %d image file(s) are symbolic links to outside the folder, followed: %s",
                       img_dir, len(linked_out), listing(sorted(linked_out)))
    files, ambiguous = [], []
    for value in ids:
        matches = sorted(set(by_stem.get(value, [])))
        if value in matches:
            matches = [value]
        if len(matches) > 1:
            ambiguous.append(f"{value!r} -> {', '.join(matches)}")
        files.append(matches[0] if matches else "")
    if ambiguous:
        raise DataError(f"{img_dir}: {len(ambiguous)} id(s) match several image files: "
                        f"{listing(ambiguous)}. Keep one file per photograph")
    return pd.Series(files, index=ids.index, dtype=object)


def missing_files_message(missing: pd.DataFrame, n_total: int, img_dir: Path, csv_path: Path) -> str:
    """Message for photographs listed in the CSV that have no file (columns id, line)."""
    items = [f"line {row.line}: {row.id!r}" for row in missing.itertuples()]
    return (f"{img_dir}: {len(missing)} of {n_total} photographs listed in {csv_path} have no image "
            f"file (looked for <id> plus one of {', '.join(IMAGE_EXTENSIONS)}): {listing(items)}. "
            "Check --img-dir (data.sources.<name>.img_dir), add the files, or remove these rows")


def enforce_bad_image_policy(bad: pd.DataFrame, n_total: int, data: DataConfig, csv_path: Path) -> None:
    """Raise or log the unusable photographs (columns id, line, reason) as ``data`` says.

    Raises:
        DataError: more than ``data.max_bad_fraction`` are bad (under either policy), or any
            is bad and ``data.on_bad_image`` is ``error``.
    """
    if bad.empty:
        return
    items = listing([f"line {row.line}: {row.id!r} ({row.reason})" for row in bad.itertuples()])
    fraction = len(bad) / n_total
    if fraction > data.max_bad_fraction:
        raise DataError(f"{csv_path}: {len(bad)} of {n_total} photographs ({fraction:.1%}) are unusable, "
                        f"more than data.max_bad_fraction ({data.max_bad_fraction:.1%}): {items}. "
                        "Fix or remove them, check --img-dir, or raise data.max_bad_fraction")
    if data.on_bad_image == "error":
        raise DataError(f"{csv_path}: {len(bad)} of {n_total} photographs are unusable: {items}. "
                        "Fix or remove them, or set data.on_bad_image: skip to leave them out "
                        "(they are then listed in bad_images.csv)")
    logger.warning("%s: leaving out %d of %d photographs (%.1f%%, data.on_bad_image=skip): %s",
                   csv_path, len(bad), n_total, 100 * fraction, items)


@dataclass(frozen=True)
class ImageCheck:
    """Outcome of :func:`check_image`: ``reason`` is empty for a usable photograph."""

    reason: str
    digest: str  # blake2b of the file bytes, "" if unreadable
    phash: int = 0
    signature: np.ndarray | None = None


def decode_reduced(data: bytes, min_side: int = WORK_MIN_SIDE) -> np.ndarray | None:
    """BGR decode scaled down by 8, 4, 2 or 1, keeping a shorter side of ``min_side`` pixels.

    JPEGs are scaled while decoding (cheap); other formats are decoded, then resized.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    if not data.startswith(b"\xff\xd8"):
        image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        factor = 1 if image is None else min(8, min(image.shape[:2]) // min_side)
        if factor > 1:
            size = (image.shape[1] // factor, image.shape[0] // factor)
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        return image
    image = cv2.imdecode(buf, _REDUCED[8])
    if image is None or min(image.shape[:2]) >= min_side:
        return image
    full_side = 8 * min(image.shape[:2])
    factor = next(f for f in (4, 2, 1) if full_side // f >= min_side or f == 1)
    return cv2.imdecode(buf, _REDUCED[factor])


def truncation(data: bytes) -> str:
    """Reason if a JPEG or PNG file lacks its end marker (cut off mid-copy), else ""."""
    if data.startswith(b"\xff\xd8") and b"\xff\xd9" not in data[-1024:] and not _jpeg_decodes_to_end(data):
        return "truncated JPEG: no end-of-image marker (FF D9)"
    if data.startswith(b"\x89PNG") and b"IEND" not in data[-1024:]:
        return "truncated PNG: no IEND chunk"
    return ""


def _jpeg_decodes_to_end(data: bytes) -> bool:
    """Whether a JPEG with no end marker in its last 1 KB is whole all the same: some cameras and editors
    append data after the image. A full decode, only for these rare files, tells it from a cut-off copy."""
    if b"\xff\xd9" not in data:
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # raises OSError ("image file is truncated") on a cut-off copy
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False
    return True


def too_large(data: bytes) -> str:
    """Reason if the image's header declares more pixels than the decoders accept, else ""."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Image.DecompressionBombError as err:  # Pillow refuses to even open beyond twice its limit
        found = re.search(r"\((\d+) pixels\)", str(err))
        pixels = int(found.group(1)) if found else 0
        width = height = 0
    except (OSError, SyntaxError, ValueError):
        return ""
    else:
        pixels = width * height
    if pixels <= MAX_DECODE_PIXELS:
        return ""
    size = f"{width}x{height} = " if width else ""
    return (f"too large: {size}{pixels:,} pixels, over the decoder's limit of {MAX_DECODE_PIXELS:,} "
            "(a decompression bomb, or a photograph to downscale before use)")


def content_problem(image: np.ndarray) -> str:
    """Reason if a decoded (H, W, 3) photograph shows no fundus or is grayscale, else ""."""
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    fundus = (gray > DARK_LEVEL).astype(np.uint8)
    fraction = cv2.countNonZero(fundus) / fundus.size
    if fraction == 0:
        return f"no fundus: image is black (max gray level {int(gray.max())})"
    if fraction < MIN_FUNDUS_FRACTION:
        return (f"no fundus: only {fraction:.1%} of the image is above gray level {DARK_LEVEL} "
                f"(minimum {MIN_FUNDUS_FRACTION:.0%})")
    std = float(cv2.meanStdDev(gray)[1][0, 0])
    if std < MIN_GRAY_STD:
        return f"no fundus: nearly uniform image (gray std {std:.1f} < {MIN_GRAY_STD})"
    b, g, r = cv2.split(image)
    spread = cv2.subtract(cv2.max(cv2.max(b, g), r), cv2.min(cv2.min(b, g), r))
    if cv2.mean(spread, mask=fundus)[0] < MAX_GRAY_SPREAD:
        return "grayscale: the colour channels are (nearly) equal; a colour fundus photograph is needed"
    return ""


def check_image(path: str) -> ImageCheck:
    """Read, verify and fingerprint one photograph (runs in a worker process)."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        return ImageCheck(f"unreadable: {err.strerror}", "")
    if not data:
        return ImageCheck("unreadable: empty file (0 bytes)", "")
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    reason = truncation(data)
    if reason:
        return ImageCheck(reason, digest)
    try:
        image = decode_reduced(data)
    except cv2.error:
        image = None
    if image is None:
        return ImageCheck(too_large(data) or "unreadable: OpenCV cannot decode it (corrupt, or not an image)",
                          digest)
    reason = content_problem(image)
    if reason:
        return ImageCheck(reason, digest)
    phash, signature = fingerprint(image)
    return ImageCheck("", digest, phash, signature)


def check_images(paths: list[str], workers: int = 0) -> list[ImageCheck]:
    """:func:`check_image` for every path, in ``workers`` processes (0: all cores)."""
    workers = resolve_workers(workers, len(paths))
    bar = {"total": len(paths), "desc": "checking images", "unit": "img"}
    if workers <= 1:
        return [check_image(p) for p in progress(paths, **bar)]
    chunk = max(1, min(32, len(paths) // (4 * workers)))
    with ProcessPoolExecutor(workers, pool_context([__name__]), initializer=cv2.setNumThreads, initargs=(1,)) as pool:
        return list(progress(pool.map(check_image, paths, chunksize=chunk), **bar))
