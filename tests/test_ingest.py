"""Labels CSV and image validation: every bad input gets a message with file, line and value."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from dr_core.config import DataConfig
from dr_core.data.ingest import (DataError, check_image, check_images, decode_reduced,
                            enforce_bad_image_policy, find_image_files, missing_files_message,
                            read_labels)

LAYOUT_COLUMNS = {"aptos": ("id_code", "diagnosis", ".png"), "eyepacs": ("image", "level", ".jpeg")}


def fundus_photo(rng: np.random.Generator, size: int = 72) -> np.ndarray:
    """BGR orange disc on black with random dark 'vessels', different for every draw."""
    img = np.zeros((size, size, 3), np.uint8)
    cv2.circle(img, (size // 2, size // 2), int(size * 0.45), (40, 90, 200), -1)
    for _ in range(8):
        a, b = rng.integers(int(size * 0.15), int(size * 0.85), (2, 2))
        cv2.line(img, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), (30, 50, 120), int(rng.integers(1, 3)))
    return img


def write_dataset(root: Path, grades: list[tuple[int, int]], layout: str = "eyepacs",
                  patient_column: bool = False, seed: int = 0) -> tuple[Path, Path]:
    """Two eyes per patient in the APTOS or EyePACS layout; returns (labels CSV, image folder)."""
    id_col, label_col, ext = LAYOUT_COLUMNS[layout]
    rng = np.random.default_rng(seed)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for p, pair in enumerate(grades):
        for eye, grade in zip(("left", "right"), pair):
            image_id = f"{p + 10}_{eye}" if layout == "eyepacs" else f"img{p:03d}{eye[0]}"
            cv2.imwrite(str(img_dir / f"{image_id}{ext}"), fundus_photo(rng))
            row = {id_col: image_id, label_col: grade}
            if patient_column:
                row["patient_id"] = f"P{p}"
            rows.append(row)
    csv = root / "labels.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv, img_dir


def write_csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize("layout", ["aptos", "eyepacs"])
def test_both_layouts_are_detected(tmp_path, layout):
    csv, _ = write_dataset(tmp_path, [(0, 1), (2, 2)], layout)
    labels = read_labels(csv, DataConfig(), num_classes=5)
    assert labels.layout == layout
    assert (labels.id_col, labels.label_col) == LAYOUT_COLUMNS[layout][:2]
    assert labels.table["grade"].tolist() == [0, 1, 2, 2]
    assert labels.table["line"].tolist() == [2, 3, 4, 5]


def test_eyepacs_ids_give_patients_and_other_ids_one_patient_each(tmp_path, caplog):
    labels = read_labels(write_csv(tmp_path, "image,level\n10_left,0\n10_right,1\n7_LEFT,2\n"),
                         DataConfig(), 5)
    assert labels.patient_source == "eyepacs"
    assert labels.table["patient"].tolist() == ["10", "10", "7"]
    labels = read_labels(write_csv(tmp_path, "image,level\n10_left,0\nscan_3,1\n"), DataConfig(), 5)
    assert labels.patient_source == "none"
    assert labels.table["patient"].tolist() == ["10_left", "scan_3"]
    assert "only 1 of 2 ids are EyePACS ids" in caplog.text  # said, not silent


def test_eyepacs_ids_with_their_extension_keep_patients_together(tmp_path):
    """Issue 28: ``10_left.jpeg`` found its file but fell back to one patient per photograph."""
    csv = write_csv(tmp_path, "image,level\n10_left.jpeg,0\n10_right.JPEG,1\n7_left.png,2\n7_right,2\n")
    labels = read_labels(csv, DataConfig(), 5)
    assert labels.patient_source == "eyepacs"
    assert labels.table["patient"].tolist() == ["10", "10", "7", "7"]
    assert read_labels(csv, DataConfig(patient="eyepacs"), 5).table["patient"].tolist() == ["10", "10", "7", "7"]


def test_one_stray_id_among_eyepacs_ids_stops_with_its_line(tmp_path):
    """Issue 28: one id off the pattern used to turn the whole file into one patient per photograph."""
    rows = "".join(f"{p}_{eye},0\n" for p in range(10, 15) for eye in ("left", "right"))
    csv = write_csv(tmp_path, "image,level\n" + rows + "scan_3.jpeg,1\n")
    with pytest.raises(DataError, match=r"labels\.csv: 10 of 11 ids are EyePACS ids .* but 1 are not: "
                                        r"line 12: 'scan_3\.jpeg'\. Correct these ids, or set data\.patient"):
        read_labels(csv, DataConfig(), 5)
    assert read_labels(csv, DataConfig(patient="none"), 5).patient_source == "none"


def test_patient_column_wins_and_can_be_named(tmp_path):
    csv = write_csv(tmp_path, "id_code,diagnosis,patient_id,subject\na,0,P1,S1\nb,1,P1,S2\n")
    assert read_labels(csv, DataConfig(), 5).table["patient"].tolist() == ["P1", "P1"]
    by_subject = read_labels(csv, DataConfig(patient="subject"), 5)
    assert by_subject.table["patient"].tolist() == ["S1", "S2"]
    assert by_subject.patient_source == "column:subject"
    assert read_labels(csv, DataConfig(patient="none"), 5).table["patient"].tolist() == ["a", "b"]


def test_patient_errors_name_row_and_fix(tmp_path):
    csv = write_csv(tmp_path, "image,level\n10_left,0\nscan_3,1\n")
    with pytest.raises(DataError, match=r"labels\.csv.*line 3: 'scan_3'.*data\.patient"):
        read_labels(csv, DataConfig(patient="eyepacs"), 5)
    with pytest.raises(DataError, match=r"'subject' \(data\.patient\) not found.*\['image', 'level'\]"):
        read_labels(csv, DataConfig(patient="subject"), 5)
    csv = write_csv(tmp_path, "id_code,diagnosis,patient_id\na,0,P1\nb,1,\n")
    with pytest.raises(DataError, match=r"empty 'patient_id'.*line 3"):
        read_labels(csv, DataConfig(), 5)


def test_explicit_columns_and_missing_columns(tmp_path):
    csv = write_csv(tmp_path, "name,grade\na,0\nb,4\n")
    labels = read_labels(csv, DataConfig(id_col="name", label_col="grade"), 5)
    assert labels.layout == "custom"
    assert labels.table["id"].tolist() == ["a", "b"]
    with pytest.raises(DataError, match=r"labels\.csv: no image id column.*'id_code' or 'image'"
                                        r".*\['name', 'grade'\].*data\.id_col"):
        read_labels(csv, DataConfig(), 5)
    with pytest.raises(DataError, match=r"'level' \(data\.label_col\) not found.*\['name', 'grade'\]"):
        read_labels(csv, DataConfig(id_col="name", label_col="level"), 5)


def test_missing_empty_header_only_and_ragged_csv(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: labels CSV not found.*--labels-csv"):
        read_labels(tmp_path / "nope.csv", DataConfig(), 5)
    with pytest.raises(DataError, match=r"labels\.csv is empty.*'image,level'"):
        read_labels(write_csv(tmp_path, ""), DataConfig(), 5)
    with pytest.raises(DataError, match=r"labels\.csv has a header \(image, level\) but no data rows"):
        read_labels(write_csv(tmp_path, "image,level\n\n"), DataConfig(), 5)
    with pytest.raises(DataError, match=r"labels\.csv: line 3 has 3 fields but the header has 2"):
        read_labels(write_csv(tmp_path, "image,level\n10_left,0\n10_right,1,1\n"), DataConfig(), 5)
    with pytest.raises(DataError, match=r"labels\.csv: the header repeats a column name \(image, image\)"):
        read_labels(write_csv(tmp_path, "image,image\n10_left,0\n"), DataConfig(), 5)


@pytest.mark.parametrize("value", ["2.5", "x", "7", "-1", ""])
def test_bad_grades_name_file_line_and_value(tmp_path, value):
    csv = write_csv(tmp_path, f"image,level\n10_left,0\n10_right,{value}\n11_left,1\n")
    with pytest.raises(DataError) as err:
        read_labels(csv, DataConfig(), 5)
    message = str(err.value)
    assert "labels.csv" in message and "line 3" in message and repr(value) in message
    assert "0..4" in message


def test_grades_written_as_floats_and_blank_lines_keep_line_numbers(tmp_path):
    csv = write_csv(tmp_path, "image,level\n10_left,2.0\n\n10_right, 3 \n")
    table = read_labels(csv, DataConfig(), 5).table
    assert table["grade"].tolist() == [2, 3]
    assert table["line"].tolist() == [2, 4]


def test_duplicate_ids_list_their_lines(tmp_path):
    csv = write_csv(tmp_path, "image,level\n10_left,0\n10_right,1\n10_left,0\n")
    with pytest.raises(DataError, match=r"labels\.csv: 1 id\(s\).*'10_left' on lines 2, 4"):
        read_labels(csv, DataConfig(), 5)


@pytest.mark.parametrize("value", ["../x", "/etc/passwd", "sub/x", "a\\b", ".."])
def test_ids_that_escape_the_image_folder(tmp_path, value):
    csv = write_csv(tmp_path, f'image,level\n10_left,0\n"{value}",1\n')
    with pytest.raises(DataError) as err:
        read_labels(csv, DataConfig(), 5)
    assert "line 3" in str(err.value) and repr(value) in str(err.value)
    assert "not plain file names" in str(err.value)


def test_image_files_found_case_insensitively_in_one_listing(tmp_path):
    for name in ("a.JPG", "b.png", "c.jpeg", "d.tiff", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    ids = pd.Series(["a", "b", "c.jpeg", "d", "notes", "zz"], index=range(2, 8))
    assert find_image_files(ids, tmp_path).tolist() == ["a.JPG", "b.png", "c.jpeg", "d.tiff", "", ""]
    (tmp_path / "b.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match=r"'b' -> b\.jpg, b\.png.*one file per photograph"):
        find_image_files(ids, tmp_path)
    with pytest.raises(DataError, match=r"nowhere: image folder not found.*--img-dir"):
        find_image_files(ids, tmp_path / "nowhere")


def test_missing_files_message_counts_and_lists_first_few():
    missing = pd.DataFrame({"id": [f"{i}_left" for i in range(14)], "line": range(2, 16)})
    message = missing_files_message(missing, 50, Path("imgs"), Path("labels.csv"))
    assert message.startswith("imgs: 14 of 50 photographs listed in labels.csv have no image file")
    assert "line 2: '0_left'" in message and "and 4 more" in message and "'13_left'" not in message


def _write(path: Path, image: np.ndarray) -> str:
    cv2.imwrite(str(path), image)
    return str(path)


def test_good_photos_pass_and_get_a_fingerprint(tmp_path):
    rng = np.random.default_rng(1)
    for ext in (".png", ".jpeg", ".bmp", ".tif"):
        check = check_image(_write(tmp_path / f"ok{ext}", fundus_photo(rng)))
        assert check.reason == "", ext
        assert check.signature is not None and len(check.digest) == 32


def test_corrupt_and_truncated_files(tmp_path):
    rng = np.random.default_rng(2)
    jpeg = Path(_write(tmp_path / "a.jpeg", fundus_photo(rng, 96))).read_bytes()
    png = Path(_write(tmp_path / "a.png", fundus_photo(rng, 96))).read_bytes()
    cases = {"cut.jpeg": jpeg[: len(jpeg) // 2], "cut.png": png[: len(png) // 2],
             "junk.png": b"\x89PNG\r\n\x1a\n" + bytes(200) + b"IEND", "text.jpeg": b"hello",
             "empty.png": b""}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    reasons = {name: check_image(str(tmp_path / name)).reason for name in cases}
    assert reasons["cut.jpeg"].startswith("truncated JPEG")
    assert reasons["cut.png"].startswith("truncated PNG")
    assert reasons["junk.png"].startswith("unreadable")
    assert reasons["text.jpeg"].startswith("unreadable")
    assert reasons["empty.png"] == "unreadable: empty file (0 bytes)"
    assert check_image(str(tmp_path / "gone.png")).reason.startswith("unreadable")


def test_jpeg_with_data_after_its_end_marker_is_whole(tmp_path):
    """Some cameras append more than 1 KB after the image; only a cut-off copy is truncated."""
    rng = np.random.default_rng(5)
    jpeg = Path(_write(tmp_path / "a.jpeg", fundus_photo(rng, 96))).read_bytes()
    (tmp_path / "trailer.jpeg").write_bytes(jpeg + bytes(range(256)) * 8)
    assert check_image(str(tmp_path / "trailer.jpeg")).reason == ""
    (tmp_path / "cut.jpeg").write_bytes(jpeg[: len(jpeg) // 2] + bytes(2048))
    assert check_image(str(tmp_path / "cut.jpeg")).reason.startswith("truncated JPEG")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels, with one empty compressed row."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(4))) + chunk(b"IEND", b"")


def test_an_image_over_the_pixel_limit_is_named_too_large(tmp_path):
    (tmp_path / "huge.png").write_bytes(_png_header_only(40000, 40000))
    reason = check_image(str(tmp_path / "huge.png")).reason
    assert reason.startswith("too large: ") and "1,600,000,000 pixels" in reason, reason


def test_symlinks_out_of_the_image_folder_are_followed_and_logged(tmp_path, caplog):
    rng = np.random.default_rng(6)
    (tmp_path / "store").mkdir()
    outside = Path(_write(tmp_path / "store" / "10_left.jpeg", fundus_photo(rng)))
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    (img_dir / "10_left.jpeg").symlink_to(outside)
    with caplog.at_level(logging.WARNING):
        files = find_image_files(pd.Series(["10_left"]), img_dir)
    assert files.tolist() == ["10_left.jpeg"]
    assert "symbolic links to outside the folder" in caplog.text and str(outside) in caplog.text


def test_grayscale_and_fundus_free_images(tmp_path):
    rng = np.random.default_rng(3)
    gray = cv2.cvtColor(fundus_photo(rng), cv2.COLOR_BGR2GRAY)
    tiny = np.zeros((80, 80, 3), np.uint8)
    cv2.circle(tiny, (40, 40), 4, (40, 90, 200), -1)
    images = {"single.png": gray, "equal.jpeg": cv2.merge([gray, gray, gray]),
              "black.png": np.zeros((64, 64, 3), np.uint8), "flat.png": np.full((64, 64, 3), 128, np.uint8),
              "tiny.png": tiny}
    reasons = {name: check_image(_write(tmp_path / name, img)).reason for name, img in images.items()}
    assert reasons["single.png"].startswith("grayscale")
    assert reasons["equal.jpeg"].startswith("grayscale")
    assert reasons["black.png"].startswith("no fundus: image is black")
    assert reasons["flat.png"].startswith("no fundus: nearly uniform")
    assert reasons["tiny.png"].startswith("no fundus: only")


def test_reduced_decode_keeps_enough_pixels(tmp_path):
    for side, expected in ((1100, 138), (600, 150), (300, 150), (90, 90)):
        image = cv2.resize(fundus_photo(np.random.default_rng(4), 96), (side, side))
        data = cv2.imencode(".jpeg", image)[1].tobytes()
        assert decode_reduced(data).shape[:2] == (expected, expected), side
    image = cv2.resize(fundus_photo(np.random.default_rng(4), 96), (512, 384))
    png = cv2.imencode(".png", image)[1].tobytes()
    assert decode_reduced(png).shape[:2] == (128, 170)


def test_process_pool_gives_the_same_checks(tmp_path):
    rng = np.random.default_rng(5)
    paths = [_write(tmp_path / f"{i}.png", fundus_photo(rng)) for i in range(6)]
    paths.append(_write(tmp_path / "black.png", np.zeros((64, 64, 3), np.uint8)))
    serial, pooled = check_images(paths, workers=1), check_images(paths, workers=2)
    assert [(c.reason, c.digest, c.phash) for c in serial] == [(c.reason, c.digest, c.phash) for c in pooled]
    assert serial[-1].reason and not serial[0].reason


def test_bad_image_policy(caplog):
    bad = pd.DataFrame({"id": ["10_left", "11_right"], "line": [2, 5],
                        "reason": ["truncated JPEG: no end-of-image marker (FF D9)", "missing file"]})
    with pytest.raises(DataError, match=r"labels\.csv: 2 of 100 .*line 2: '10_left' \(truncated JPEG"
                                        r".*on_bad_image: skip"):
        enforce_bad_image_policy(bad, 100, DataConfig(on_bad_image="error"), Path("labels.csv"))
    with caplog.at_level(logging.WARNING):
        enforce_bad_image_policy(bad, 100, DataConfig(on_bad_image="skip"), Path("labels.csv"))
    assert "leaving out 2 of 100" in caplog.text
    with pytest.raises(DataError, match=r"2 of 10 photographs \(20\.0%\).*max_bad_fraction \(5\.0%\)"):
        enforce_bad_image_policy(bad, 10, DataConfig(on_bad_image="skip"), Path("labels.csv"))
    enforce_bad_image_policy(bad.iloc[:0], 10, DataConfig(), Path("labels.csv"))
