"""Duplicate detection and the groups kept in one split."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pandas as pd
import pytest

from dr_core.data import dedup
from dr_core.data.ingest import decode_reduced
from test_ingest import fundus_photo


def _fingerprint(image: np.ndarray, ext: str = ".png", flags: tuple[int, ...] = ()) -> tuple[int, np.ndarray]:
    return dedup.fingerprint(decode_reduced(cv2.imencode(ext, image, list(flags))[1].tobytes()))


def _hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def test_recompressed_copy_matches_and_different_photos_do_not():
    rng = np.random.default_rng(0)
    photos = [fundus_photo(rng, 96) for _ in range(30)]
    prints = [_fingerprint(p) for p in photos]
    brighter = np.clip(photos[0].astype(int) + 6, 0, 255).astype(np.uint8)
    copy_hash, copy_sig = _fingerprint(brighter, ".jpeg", (cv2.IMWRITE_JPEG_QUALITY, 95))
    assert _hamming(copy_hash, prints[0][0]) <= 8
    assert float(copy_sig.astype(np.float32) @ prints[0][1].astype(np.float32)) >= dedup.MIN_CORRELATION
    hashes = np.array([h for h, _ in prints], dtype=np.uint64)
    signatures = np.stack([s for _, s in prints])
    assert len(dedup.near_pairs(hashes, signatures, max_distance=64)) == 0  # verification rejects all


def test_near_pairs_matches_brute_force_across_blocks(monkeypatch):
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**63, 300, dtype=np.uint64)
    hashes[50] = hashes[7] ^ np.uint64(0b1011)  # 3 bits apart
    hashes[299] = hashes[7]
    signatures = np.ones((300, 4), np.float16) / 2  # every candidate confirmed
    monkeypatch.setattr(dedup, "PAIRS_PER_BLOCK", 300 * 7)  # 7 rows per block
    found = dedup.near_pairs(hashes, signatures, max_distance=3)
    dist = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    expected = np.argwhere(np.triu(dist <= 3, k=1))
    assert found.tolist() == expected.tolist()
    assert [7, 50] in found.tolist() and [7, 299] in found.tolist()
    assert len(dedup.near_pairs(hashes, signatures, max_distance=-1)) == 0


def test_find_duplicates_separates_exact_from_near():
    hashes = np.array([5, 5, 4, 1 << 40], dtype=np.uint64)
    signatures = np.ones((4, 4), np.float16) / 2
    exact, near = dedup.find_duplicates(["a", "a", "b", "c"], hashes, signatures, max_distance=1)
    assert exact.tolist() == [[0, 1]]
    assert near.tolist() == [[0, 2], [1, 2]]
    exact, near = dedup.find_duplicates(["a", "a", "b", "c"], hashes, signatures, max_distance=-1)
    assert exact.tolist() == [[0, 1]] and near.size == 0


def test_groups_join_patients_through_duplicates():
    patients = pd.Series(["p1", "p1", "p2", "p3", "p3", "p4"])
    groups = dedup.split_groups(patients, np.array([[1, 3]]))  # p1's photo duplicates p3's
    assert groups.tolist() == [0, 0, 1, 0, 0, 2]


def test_duplicate_report_kinds_and_conflicting_grades(caplog):
    table = pd.DataFrame({"id": ["a", "b", "c", "d", "e"], "file": [f"{x}.png" for x in "abcde"],
                          "grade": [0, 0, 2, 3, 1]})
    with caplog.at_level(logging.WARNING):
        report = dedup.duplicate_report(table, np.array([[0, 1]]), np.array([[1, 2], [3, 4]]))
    assert report.columns.tolist() == ["group", "id", "file", "grade", "kind"]
    assert report["group"].tolist() == [0, 0, 0, 1, 1]
    assert report["kind"].tolist() == ["exact", "exact", "near", "near", "near"]
    assert "conflicting grades [0, 2]" in caplog.text and "conflicting grades [1, 3]" in caplog.text
    empty = dedup.duplicate_report(table, np.empty((0, 2), int), np.empty((0, 2), int))
    assert empty.empty and empty.columns.tolist() == report.columns.tolist()


@pytest.mark.parametrize("n", [1, 2])
def test_small_inputs(n):
    hashes = np.zeros(n, np.uint64)
    pairs = dedup.near_pairs(hashes, np.ones((n, 4), np.float16) / 2, max_distance=0)
    assert pairs.shape == (n - 1, 2)
