"""Synthetic colour fundus photographs: the built-in demo dataset.

:func:`render_fundus` paints one photograph of a given DR grade: healthy anatomy
from :mod:`dr_core.synthetic.anatomy`, lesions from :mod:`dr_core.synthetic.lesions`,
then the camera (uneven illumination, frame, blur, sensor noise, JPEG softness);
:func:`make_demo_dataset` writes a seeded two-eyes-per-patient dataset in the
APTOS layout with the APTOS 2019 grade proportions.
"""
from __future__ import annotations

import difflib
import logging
import math
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from dr_core.synthetic.anatomy import (Layout, add_optic_disc, draw_vessel, paint_background, retina_colour,
                                       sample_layout, vessel_tree)
from dr_core.runtime.io import write_atomic
from dr_core.runtime.workers import pool_context, resolve_workers
from dr_core.synthetic.lesions import LAYERS, paint_lesions, plan_lesions
from dr_core.runtime.progress import progress

log = logging.getLogger(__name__)

APTOS_GRADE_COUNTS = (1805, 370, 999, 193, 295)  # No DR, Mild, Moderate, Severe, Proliferative
EYES = ("left", "right")
# Colours as multipliers of the per-image retina colour. "Darken" layers are seen through
# (vessels, blood in the retina); "mix" layers cover what lies beneath.
_VEIN, _ARTERY = (0.66, 0.34, 0.44), (0.88, 0.62, 0.68)
_DARKEN = {"red": (0.58, 0.22, 0.24), "nv": (0.68, 0.28, 0.33), "pigment": (0.45, 0.36, 0.42)}
_MIX = {"yellow": (1.4, 2.1, 1.8), "white": (1.3, 2.1, 3.0), "pale": (1.2, 1.75, 2.1),
        "pool": (0.6, 0.16, 0.15)}


def render_fundus(grade: int, rng: np.random.Generator, size: int, eye: str = "left") -> np.ndarray:
    """Render one synthetic colour fundus photograph.

    Args:
        grade: DR grade 0 (none) .. 4 (proliferative); sets the lesions drawn.
        rng: Seeded generator; the same state gives the same image.
        size: Height and width in pixels (>= 32).
        eye: "left" (optic disc on the left of the image) or "right" (mirrored).

    Returns:
        RGB uint8 array (size, size, 3).
    """
    _check_int("grade", grade, 0, "an integer 0..4 (No DR .. Proliferative)", high=4)
    _check_int("size", size, 32, "an integer >= 32 pixels")
    if eye not in EYES:
        close = difflib.get_close_matches(str(eye), EYES, n=1)
        raise ValueError(f"eye must be one of {list(EYES)}, got {eye!r}"
                         + (f"; did you mean {close[0]!r}?" if close else ""))
    size = int(size)
    layout = sample_layout(size, rng)
    yy, xx = np.ogrid[:size, :size]
    xx, yy = xx.astype(np.float32), yy.astype(np.float32)
    colour = retina_colour(rng)
    refl = paint_background(layout, colour, xx, yy, rng)  # (3, S, S) reflectance
    add_optic_disc(refl, layout, colour, rng)
    masks = {name: np.zeros((size, size), np.uint8) for name in ("vein", "artery", *LAYERS)}
    vessels = vessel_tree(layout, rng)
    for v in vessels:
        draw_vessel(masks["vein" if v.vein else "artery"], v)
    paint_lesions(plan_lesions(int(grade), rng), layout, vessels, masks, rng)
    _composite(refl, masks, colour)
    return _photograph(refl, layout, xx, yy, eye, rng)


def _check_int(name: str, value: object, low: int, expected: str, high: int | None = None) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= low
    if not ok or (high is not None and value > high):
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def _composite(refl: np.ndarray, masks: dict[str, np.ndarray], colour: np.ndarray) -> None:
    """Turn the opacity masks into colour (in place, planar (3, S, S))."""
    masks["white"] = cv2.GaussianBlur(masks["white"], (0, 0), 0.004 * refl.shape[1] + 0.3)
    masks["pool"] = cv2.GaussianBlur(masks["pool"], (0, 0), 0.5 + 0.002 * refl.shape[1])
    base = refl.copy()
    for name, f in (("vein", _VEIN), *_DARKEN.items()):
        if not masks[name].any():
            continue
        a = masks[name].astype(np.float32) * np.float32(1 / 255)
        for c in range(3):
            refl[c] *= 1.0 - a * np.float32(1.0 - f[c])
        if name == "vein":  # arteries pass over veins
            a = masks["artery"].astype(np.float32) * np.float32(1 / 255)
            for c in range(3):
                refl[c] += a * (base[c] * np.float32(_ARTERY[c]) - refl[c])
    for name, f in _MIX.items():
        if masks[name].any():
            a = masks[name].astype(np.float32) * np.float32(1 / 255)
            for c in range(3):
                refl[c] += a * (colour[c] * np.float32(f[c]) - refl[c])


def _photograph(refl: np.ndarray, layout: Layout, xx: np.ndarray, yy: np.ndarray, eye: str,
                rng: np.random.Generator) -> np.ndarray:
    """Camera: uneven illumination, exposure, noise, frame, blur, JPEG, mirroring."""
    s, r = layout.size, layout.radius
    cx, cy = layout.centre
    icx, icy = cx + rng.normal(0.0, 0.12 * r), cy + rng.normal(0.0, 0.12 * r)
    d2 = ((xx - icx) ** 2 + (yy - icy) ** 2) * np.float32(1 / r ** 2)
    t = rng.uniform(0, 2 * math.pi)
    tilt = rng.uniform(0.0, 0.15) / r * ((xx - cx) * math.cos(t) + (yy - cy) * math.sin(t))
    illum = np.clip(1.0 - rng.uniform(0.15, 0.35) * d2 - rng.uniform(0.2, 0.45) * d2 * d2 + tilt, 0.1, 1.3)
    dist = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    frame = np.clip(r - dist + 0.5, 0, 1) * np.clip(layout.half_height - np.abs(yy - cy) + 0.5, 0, 1)
    halo = np.clip((dist / r - 0.8) / 0.2, 0, 1) ** 2 * rng.uniform(0.1, 0.3) if rng.random() < 0.35 else None
    exposure = np.float32(rng.uniform(0.8, 1.15))
    noise_sd = rng.uniform(0.006, 0.016) / 104.0  # a - b of two uniform bytes has sd ~104
    planes = []
    for c in (2, 1, 0):  # BGR for cv2
        plane = refl[c] * illum * exposure
        if halo is not None:
            plane += halo * np.float32((0.55, 0.75, 0.7)[c])
        noise = np.frombuffer(rng.bytes(2 * s * s), np.uint8).reshape(2, s, s).astype(np.float32)
        plane += (noise[0] - noise[1]) * np.float32(noise_sd)
        planes.append(plane * frame)
    img = cv2.GaussianBlur(cv2.merge(planes), (0, 0), rng.uniform(0.4, 0.9) * s / 384)
    gamma = rng.uniform(0.85, 1.15)
    lut = np.round(255 * (np.arange(256) / 255) ** gamma).astype(np.uint8)
    bgr = cv2.LUT((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), lut)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(80, 96))])
    assert ok, "cv2 could not JPEG-encode a synthetic image"
    rgb = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
    return np.ascontiguousarray(rgb[:, ::-1] if eye == "right" else rgb)


def assign_grades(n_patients: int, rng: np.random.Generator, concordance: float = 0.8) -> np.ndarray:
    """Grades of both eyes, (n_patients, 2) as [left, right], with APTOS 2019 proportions.

    Image counts per grade are fixed quotas of ``2 * n_patients`` (largest remainder),
    so the proportions match APTOS to within one image per grade. Eyes are first paired
    within a grade; then about ``1 - concordance`` of the patients get a neighbouring
    grade in one eye, by swapping eyes between same-grade patients of neighbouring
    grades (which keeps the quotas).
    """
    _check_int("n_patients", n_patients, 1, "an integer >= 1")
    if not 0.0 <= concordance <= 1.0:
        raise ValueError(f"concordance must be a fraction in [0, 1], got {concordance!r}")
    share = np.asarray(APTOS_GRADE_COUNTS, np.float64) / sum(APTOS_GRADE_COUNTS)
    n_images = 2 * int(n_patients)
    quota = np.floor(share * n_images).astype(int)
    remainder = share * n_images - quota
    quota[np.argsort(-remainder, kind="stable")[: n_images - quota.sum()]] += 1
    pairs = np.repeat(np.arange(len(quota)), quota).reshape(-1, 2)
    swaps = round(n_patients * (1.0 - concordance) / 2)
    for _ in range(20 * swaps):
        same = np.flatnonzero(pairs[:, 0] == pairs[:, 1])
        if swaps == 0 or len(same) < 2:
            break
        a = int(rng.choice(same))
        partners = same[np.abs(pairs[same, 0] - pairs[a, 0]) == 1]
        if len(partners):
            b = int(rng.choice(partners))
            pairs[[a, b], 1] = pairs[[b, a], 1]
            swaps -= 1
    pairs = pairs[rng.permutation(len(pairs))]
    flip = rng.random(len(pairs)) < 0.5
    pairs[flip] = pairs[flip, ::-1]
    return pairs


def make_demo_dataset(out_dir: Path, n_patients: int, image_size: int, seed: int,
                      workers: int = 0) -> pd.DataFrame:
    """Write a synthetic DR dataset in the APTOS layout, two eyes per patient.

    Writes ``out_dir/train.csv`` (``id_code,diagnosis,patient_id``) and
    ``out_dir/train_images/<id_code>.png``. Image ``i`` is rendered from
    ``SeedSequence(seed, spawn_key=(i,))``, so the bytes depend only on the arguments,
    never on the worker count.

    Args:
        out_dir: Output folder (created if missing).
        n_patients: Number of patients (>= 1); 2 images each.
        image_size: Image height and width in pixels (>= 32).
        seed: Non-negative integer seed.
        workers: Processes; 0 uses all cores, 1 renders in this process. Other values start a
            fork-server pool, so a calling script needs an ``if __name__ == "__main__":`` guard.

    Returns:
        The rows of train.csv.
    """
    _check_int("n_patients", n_patients, 1, "an integer >= 1 (demo.n_patients in params.yaml)")
    _check_int("image_size", image_size, 32, "an integer >= 32 pixels (demo.image_size in params.yaml)")
    _check_int("seed", seed, 0, "a non-negative integer (seed in params.yaml)")
    _check_int("workers", workers, 0, "0 (all cores) or a positive number of processes")
    out_dir = Path(out_dir)
    img_dir = out_dir / "train_images"
    img_dir.mkdir(parents=True, exist_ok=True)
    grades = assign_grades(int(n_patients), np.random.default_rng(np.random.SeedSequence(int(seed))))
    width = max(4, len(str(n_patients)))
    rows, tasks = [], []
    for p in range(int(n_patients)):
        patient = f"demo_p{p + 1:0{width}d}"
        for e, eye in enumerate(EYES):
            id_code, grade = f"{patient}_{eye}", int(grades[p, e])
            rows.append((id_code, grade, patient))
            tasks.append((int(seed), 2 * p + e, grade, int(image_size), eye, str(img_dir / f"{id_code}.png")))
    n_proc = resolve_workers(workers, len(tasks))
    with progress(total=len(tasks), desc="demo images", unit="img") as bar:
        if n_proc == 1:
            for task in tasks:
                _write_image(task)
                bar.update()
        else:
            with ProcessPoolExecutor(n_proc, mp_context=pool_context([__name__]), initializer=cv2.setNumThreads,
                                     initargs=(1,)) as pool:
                for _ in pool.map(_write_image, tasks, chunksize=max(1, len(tasks) // (8 * n_proc))):
                    bar.update()
    table = pd.DataFrame(rows, columns=["id_code", "diagnosis", "patient_id"])
    csv = table.to_csv(index=False).encode()
    write_atomic(out_dir / "train.csv", lambda p: p.write_bytes(csv))
    stale = {f.name for f in img_dir.glob("*.png")} - {f"{r[0]}.png" for r in rows}
    if stale:
        log.warning("%s holds %d PNGs that are not in train.csv (from an earlier run?), e.g. %s",
                    img_dir, len(stale), sorted(stale)[0])
    log.info("wrote %d synthetic images (%d px) of %d patients to %s", len(rows), image_size, n_patients,
             out_dir)
    return table


def _write_image(task: tuple[int, int, int, int, str, str]) -> None:
    seed, index, grade, size, eye, path = task
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    rgb = render_fundus(grade, rng, size, eye)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise OSError(f"{path}: cv2 could not PNG-encode the synthetic image")
    data = buf.tobytes()
    write_atomic(Path(path), lambda p: p.write_bytes(data))
