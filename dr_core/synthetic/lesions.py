"""Diabetic-retinopathy lesions for synthetic fundus photographs.

Lesions are drawn as anti-aliased uint8 opacity masks, one per kind of tissue
(see :data:`LAYERS`), in the orientation of a left eye; :mod:`dr_core.synthetic.demo`
turns the masks into colour. Sizes are fractions of the image size so that every
cue stays at least 1.5 px wide after resizing to 224 px.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from dr_core.synthetic.anatomy import Layout, Vessel

# Opacity layers, composited in this order by dr_core.synthetic.demo.
LAYERS = ("red", "nv", "pigment", "yellow", "white", "pale", "pool")
_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT


@dataclass(frozen=True)
class LesionPlan:
    """How many lesions of each kind one photograph shows."""

    microaneurysms: int = 0
    haemorrhages: int = 0
    all_quadrants: bool = False
    exudate_clusters: int = 0
    cotton_wool: int = 0
    beaded_veins: int = 0
    nv_tufts: int = 0
    preretinal: bool = False
    laser_scars: int = 0

    @property
    def red_lesions(self) -> int:
        return self.microaneurysms + self.haemorrhages


def plan_lesions(grade: int, rng: np.random.Generator) -> LesionPlan:
    """Draw lesion counts for a grade (0 none ... 4 proliferative)."""
    r = rng.integers
    if grade == 0:
        return LesionPlan()
    if grade == 1:  # mild: microaneurysms only
        return LesionPlan(microaneurysms=int(r(3, 9)))
    if grade == 2:
        return LesionPlan(microaneurysms=int(r(8, 20)), haemorrhages=int(r(3, 10)),
                          exudate_clusters=int(rng.choice([0, 1, 1, 2])),
                          cotton_wool=int(rng.random() < 0.25))
    if grade == 3:  # severe: many haemorrhages in all four quadrants, venous beading
        return LesionPlan(microaneurysms=int(r(14, 30)), haemorrhages=int(r(24, 44)), all_quadrants=True,
                          exudate_clusters=int(rng.choice([0, 1, 1, 2])), cotton_wool=int(r(1, 5)),
                          beaded_veins=int(r(1, 4)))
    # proliferative: new vessels, often a preretinal haemorrhage, sometimes laser scars
    return LesionPlan(microaneurysms=int(r(8, 25)), haemorrhages=int(r(8, 36)),
                      all_quadrants=bool(rng.random() < 0.5), exudate_clusters=int(rng.choice([0, 1, 2])),
                      cotton_wool=int(r(0, 4)), beaded_veins=int(r(0, 3)), nv_tufts=int(r(1, 3)),
                      preretinal=bool(rng.random() < 0.7),
                      laser_scars=int(r(50, 120)) if rng.random() < 0.35 else 0)


def paint_lesions(plan: LesionPlan, layout: Layout, vessels: list[Vessel], masks: dict[str, np.ndarray],
                  rng: np.random.Generator) -> None:
    """Draw the lesions of ``plan`` into ``masks`` (uint8, in place; ``masks['vein']`` gets the beading)."""
    s, dd = layout.size, 2.0 * layout.disc_radius
    for x, y in _points(layout, rng, plan.microaneurysms, 0.0, 0.8, around_fovea=True):
        _disc_dot(masks["red"], x, y, s * rng.uniform(0.0038, 0.0055), 255)
    per_q = plan.all_quadrants
    for x, y in _points(layout, rng, plan.haemorrhages, 0.1 if per_q else 0.0, 0.9 if per_q else 0.7,
                        around_fovea=not per_q, quadrants=per_q):
        if rng.random() < 0.15:  # flame-shaped, along the nerve fibres
            angle = math.degrees(math.atan2(y - layout.disc[1], x - layout.disc[0]))
            _ellipse(masks["red"], x, y, s * rng.uniform(0.012, 0.024), s * rng.uniform(0.004, 0.007),
                     angle, 230)
        else:
            big = rng.random() < (0.5 if per_q else 0.3)
            _blob(masks["red"], x, y, s * (rng.uniform(0.011, 0.02) if big else rng.uniform(0.006, 0.011)),
                  rng, int(rng.integers(215, 256)))
    for _ in range(plan.exudate_clusters):
        _exudates(masks["yellow"], layout, rng)
    for x, y in _points(layout, rng, plan.cotton_wool, 0.15, 0.7, around_fovea=True):
        _blob(masks["white"], x, y, dd * rng.uniform(0.12, 0.22), rng, int(rng.integers(110, 180)), lobes=4)
    veins = sorted((v for v in vessels if v.vein and v.depth <= 1), key=lambda v: -v.widths[0])
    for vessel in veins[: plan.beaded_veins]:
        _bead(masks["vein"], vessel, rng)
    for _ in range(plan.nv_tufts):
        _nv_tuft(masks, layout, veins, rng)
    if plan.preretinal:
        _preretinal(masks["pool"], layout, rng)
    for x, y in _points(layout, rng, plan.laser_scars, 0.45, 0.95, around_fovea=False, keep_out=2.2 * dd):
        rad = s * rng.uniform(0.009, 0.014)
        _blob(masks["pale"], x, y, rad, rng, int(rng.integers(110, 190)), lobes=2)
        if rng.random() < 0.7:  # pigment clumped in the scar
            _disc_dot(masks["pigment"], x + rng.normal(0, 0.4 * rad), y + rng.normal(0, 0.4 * rad),
                      rad * rng.uniform(0.3, 0.6), int(rng.integers(150, 230)))
        else:
            cv2.circle(masks["pigment"], _pt(x, y), int(rad * _ONE), int(rng.integers(100, 180)),
                       max(1, round(s / 300)), cv2.LINE_AA, _SHIFT)


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x * _ONE)), int(round(y * _ONE))


def _disc_dot(mask: np.ndarray, x: float, y: float, radius: float, value: int) -> None:
    cv2.circle(mask, _pt(x, y), int(round(radius * _ONE)), value, -1, cv2.LINE_AA, _SHIFT)


def _ellipse(mask: np.ndarray, x: float, y: float, a: float, b: float, angle: float, value: int) -> None:
    axes = (int(round(a * _ONE)), int(round(b * _ONE)))
    cv2.ellipse(mask, _pt(x, y), axes, float(angle), 0, 360, value, -1, cv2.LINE_AA, _SHIFT)


def _blob(mask: np.ndarray, x: float, y: float, radius: float, rng: np.random.Generator, value: int,
          lobes: int = 3) -> None:
    """An irregular spot made of a few overlapping ellipses."""
    for _ in range(lobes):
        dx, dy = rng.normal(0.0, 0.3 * radius, 2)
        a, b = radius * rng.uniform(0.55, 1.0, 2)
        _ellipse(mask, x + dx, y + dy, a, b, rng.uniform(0, 180), value)


def _points(layout: Layout, rng: np.random.Generator, n: int, r_min: float, r_max: float,
            around_fovea: bool, quadrants: bool = False, keep_out: float = 0.0) -> np.ndarray:
    """``n`` random points (n, 2) at r_min..r_max retina radii from the fovea or the retina centre.

    Points outside the frame, on the optic disc or within ``keep_out`` px of the fovea are
    rejected; with ``quadrants`` the points are spread evenly over the four quadrants.
    """
    if n <= 0:
        return np.zeros((0, 2))
    cx, cy = layout.fovea if around_fovea else layout.centre
    m = 4 * n + 16
    rad = layout.radius * np.sqrt(rng.uniform(r_min ** 2, r_max ** 2, m))
    if quadrants:
        theta = (np.arange(m) % 4 + rng.uniform(0.05, 0.95, m)) * (math.pi / 2)
    else:
        theta = rng.uniform(0, 2 * math.pi, m)
    pts = np.stack([cx + rad * np.cos(theta), cy + rad * np.sin(theta)], axis=1)
    ok = np.hypot(*(pts - layout.centre).T) < 0.95 * layout.radius
    ok &= np.abs(pts[:, 1] - layout.centre[1]) < layout.half_height - 0.02 * layout.radius  # inside the frame
    ok &= np.hypot(*(pts - layout.disc).T) > 1.4 * layout.disc_radius
    ok &= np.hypot(*(pts - layout.fovea).T) >= keep_out
    return pts[ok][:n]


def _exudates(mask: np.ndarray, layout: Layout, rng: np.random.Generator) -> None:
    """A cluster or a circinate ring of hard exudates near the macula."""
    s, dd = layout.size, 2.0 * layout.disc_radius
    theta = rng.uniform(0, 2 * math.pi)
    dist = dd * rng.uniform(0.5, 1.8)
    cx, cy = layout.fovea[0] + dist * math.cos(theta), layout.fovea[1] + dist * math.sin(theta)
    k = int(rng.integers(8, 24))
    if rng.random() < 0.5:  # ring around a leaking point
        ang = rng.uniform(0, 2 * math.pi, k)
        rr = dd * rng.uniform(0.25, 0.55) * rng.uniform(0.85, 1.15, k)
        xs, ys = cx + rr * np.cos(ang), cy + rr * np.sin(ang)
    else:
        xs, ys = rng.normal(cx, 0.3 * dd, k), rng.normal(cy, 0.3 * dd, k)
    for x, y in zip(xs, ys):
        _blob(mask, x, y, s * rng.uniform(0.004, 0.008), rng, 255, lobes=2)


def _bead(mask: np.ndarray, vessel: Vessel, rng: np.random.Generator) -> None:
    """Venous beading: irregular sausage-like swellings along a stretch of a vein."""
    pts, widths = vessel.points, vessel.widths
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
    pos = arc[-1] * rng.uniform(0.1, 0.4)
    stop = min(arc[-1] * 0.9, pos + arc[-1] * rng.uniform(0.3, 0.5))
    while pos < stop:
        w = float(np.interp(pos, arc, widths))
        length = w * rng.uniform(1.2, 2.5)  # a swelling is a short thick stretch, not a round bead
        for p in np.linspace(pos, pos + length, 3):
            _disc_dot(mask, np.interp(p, arc, pts[:, 0]), np.interp(p, arc, pts[:, 1]),
                      w * rng.uniform(0.7, 0.9), 255)
        pos += length + w * rng.uniform(1.5, 3.5)


def _nv_tuft(masks: dict[str, np.ndarray], layout: Layout, veins: list[Vessel],
             rng: np.random.Generator) -> None:
    """Neovascularisation: a tangle of fine vessel loops at the disc or on a major vein."""
    rd = layout.disc_radius
    if rng.random() < 0.5 or not veins:
        cx, cy = np.array(layout.disc) + rng.normal(0.0, 0.4 * rd, 2)
    else:
        pts = veins[int(rng.integers(len(veins)))].points
        cx, cy = pts[int(len(pts) * rng.uniform(0.3, 0.7))]
    extent = rd * rng.uniform(0.7, 1.1)
    _ellipse(masks["nv"], cx, cy, extent, extent * rng.uniform(0.6, 1.0), rng.uniform(0, 180), 90)
    if rng.random() < 0.4:  # fibrous tissue
        _blob(masks["white"], cx, cy, extent * 0.8, rng, 90, lobes=3)
    t = np.linspace(0, 2 * math.pi, 25)
    for k in range(int(rng.integers(16, 28))):
        ox, oy = rng.normal(0.0, 0.45 * extent, 2)
        rho = extent * rng.uniform(0.1, 0.3) * (1 + 0.25 * np.sin(2 * t + rng.uniform(0, 6))
                                                 + 0.15 * np.sin(3 * t + rng.uniform(0, 6)))
        loop = np.stack([cx + ox + rho * np.cos(t), cy + oy + rho * np.sin(t)], axis=1)
        cv2.polylines(masks["nv"], [np.round(loop * _ONE).astype(np.int32)], True, 255,
                      max(1, round(layout.size / (200 if k % 2 else 350))), cv2.LINE_AA, _SHIFT)


def _preretinal(mask: np.ndarray, layout: Layout, rng: np.random.Generator) -> None:
    """A boat-shaped preretinal haemorrhage: a dark pool with a flat (fluid-level) top edge."""
    dd = 2.0 * layout.disc_radius
    theta = rng.uniform(0, 2 * math.pi)
    dist = min(dd * rng.uniform(0.8, 2.2), 0.6 * layout.radius)
    cx, cy = layout.fovea[0] + dist * math.cos(theta), layout.fovea[1] + dist * math.sin(theta)
    a = dd * rng.uniform(0.6, 1.2)
    b = a * rng.uniform(0.55, 0.8)
    patch = np.zeros_like(mask)
    _ellipse(patch, cx, cy, a, b, rng.uniform(-8, 8), 255)
    for _ in range(3):  # uneven lower rim
        ox = rng.uniform(-0.6, 0.6) * a
        _ellipse(patch, cx + ox, cy + rng.uniform(0.0, 0.25) * b, a * rng.uniform(0.3, 0.5),
                 b * rng.uniform(0.6, 0.9), rng.uniform(-20, 20), 255)
    top = int(round(cy - b * rng.uniform(0.0, 0.35)))
    patch[: max(top, 0)] = 0
    y0, y1 = max(top, 0), min(int(cy + b) + 2, mask.shape[0])
    ramp = np.linspace(0.72, 1.0, max(y1 - y0, 1), dtype=np.float32)[:, None]  # blood settles low
    patch[y0:y1] = (patch[y0:y1] * ramp).astype(np.uint8)
    np.maximum(mask, patch, out=mask)
