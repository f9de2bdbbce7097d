"""Healthy anatomy of a synthetic fundus photograph: field of view, colour, macula, disc, vessels.

Everything is drawn in the orientation of a left eye (optic disc on the left);
:func:`dr_core.synthetic.demo.render_fundus` mirrors right eyes at the end. Reflectance
images are planar float32 ``(3, S, S)`` RGB; vessels are drawn as anti-aliased
uint8 opacity masks.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

_StepFn = Callable[[float, float], "float | None"]  # (x, y) -> heading to steer to, or None
_SHIFT = 4  # sub-pixel bits for cv2 drawing


class Vessel(NamedTuple):
    """One unbranched vessel segment: centre line and calibre in pixels."""

    points: np.ndarray  # (N, 2) x, y
    widths: np.ndarray  # (N,)
    vein: bool
    depth: int  # 0 for the trunks leaving the disc


@dataclass(frozen=True)
class Layout:
    """Where the anatomy of one photograph lies, in pixels (left-eye orientation)."""

    size: int
    centre: tuple[float, float]
    radius: float
    disc: tuple[float, float]
    disc_radius: float
    fovea: tuple[float, float]
    half_height: float  # the camera frame cuts the circle at centre_y +- half_height


def sample_layout(size: int, rng: np.random.Generator) -> Layout:
    """Random field of view (sometimes cut at top and bottom), disc size and disc and fovea positions."""
    if rng.random() < 0.3:  # wide field cut at top and bottom by the sensor
        radius, half_height = size * rng.uniform(0.5, 0.56), size * rng.uniform(0.44, 0.48)
    else:
        radius = size * rng.uniform(0.4, 0.485)
        half_height = radius + 1.0
    cx, cy = size / 2 + rng.normal(0.0, 0.008 * size), size / 2 + rng.normal(0.0, 0.008 * size)
    disc_radius = radius * rng.uniform(0.12, 0.145)
    dd = 2 * disc_radius
    fx, fy = cx + radius * rng.normal(0.04, 0.04), cy + radius * rng.normal(0.0, 0.04)
    disc = (fx - dd * rng.uniform(2.3, 2.7), fy - dd * rng.uniform(0.0, 0.3))
    return Layout(size, (cx, cy), radius, disc, disc_radius, (fx, fy), half_height)


def retina_colour(rng: np.random.Generator) -> np.ndarray:
    """Per-image retina colour including the camera cast, (3, 1, 1): orange, red or brown."""
    r = rng.uniform(0.72, 0.92)
    g = r * rng.uniform(0.42, 0.68)
    rgb = [r, g, g * rng.uniform(0.35, 0.65)]
    return np.array(rgb, np.float32).reshape(3, 1, 1)


def paint_background(layout: Layout, colour: np.ndarray, xx: np.ndarray, yy: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
    """Mottled fundus reflectance with the darker macula; (3, S, S) float32.

    ``xx`` (1, S) and ``yy`` (S, 1) are the pixel coordinates.
    """
    s = layout.size

    def noise(cells: int, interpolation: int) -> np.ndarray:
        grid = rng.normal(0, 1, (cells, cells)).astype(np.float32)
        return cv2.resize(grid, (s, s), interpolation=interpolation)

    tex = 1.0 + 0.07 * noise(6, cv2.INTER_CUBIC) + 0.025 * noise(48, cv2.INTER_LINEAR)
    tex += 0.02 * noise(s // 4, cv2.INTER_LINEAR)
    fx, fy = layout.fovea
    dd = 2 * layout.disc_radius

    def bump(sigma: float) -> np.ndarray:
        return np.exp(-((yy - fy) ** 2) / (2 * sigma ** 2)) * np.exp(-((xx - fx) ** 2) / (2 * sigma ** 2))

    macula = rng.uniform(0.25, 0.42) * bump(dd * rng.uniform(0.55, 0.8)) + 0.15 * bump(dd * 0.18)
    return np.stack([colour[c] * tex * (1.0 - w * macula) for c, w in enumerate((0.7, 1.0, 0.9))])


def add_optic_disc(refl: np.ndarray, layout: Layout, colour: np.ndarray, rng: np.random.Generator) -> None:
    """Optic disc: bright yellowish rim, paler cup, soft glow around it (in place)."""
    rd = layout.disc_radius
    dx, dy = layout.disc
    h = int(2.2 * rd) + 2
    x0, y0 = max(int(dx) - h, 0), max(int(dy) - h, 0)
    x1, y1 = min(int(dx) + h, layout.size), min(int(dy) + h, layout.size)
    yy, xx = np.ogrid[y0:y1, x0:x1]
    ax, ay = rd * rng.uniform(0.88, 1.0), rd * rng.uniform(1.0, 1.12)
    d = np.sqrt(((xx - dx) / ax) ** 2 + ((yy - dy) / ay) ** 2).astype(np.float32)
    rim = np.clip((1.0 - d) / 0.1 + 0.5, 0, 1)
    glow = 0.15 * np.exp(-np.maximum(d - 1.0, 0) ** 2 / 0.06) * (1 - rim)
    cup_r = rng.uniform(0.3, 0.55)
    dc = np.sqrt(((xx - dx - 0.15 * rd) / (ax * cup_r)) ** 2 + ((yy - dy) / (ay * cup_r)) ** 2)
    cup = np.clip((1.0 - dc) / 0.35 + 0.3, 0, 1).astype(np.float32)
    bright = rng.uniform(0.9, 1.15)
    rim_c = colour * np.array([1.7, 2.6, 3.0], np.float32).reshape(3, 1, 1) * bright
    cup_c = colour * np.array([2.0, 3.4, 5.0], np.float32).reshape(3, 1, 1) * bright
    patch = refl[:, y0:y1, x0:x1]
    a = rim + glow
    patch += a * (rim_c * (1 - cup) + cup_c * cup - patch)


def vessel_tree(layout: Layout, rng: np.random.Generator) -> list[Vessel]:
    """Arteries and veins leaving the disc: temporal arcades around the macula plus nasal trunks."""
    out: list[Vessel] = []
    dd = 2 * layout.disc_radius
    ox, oy = layout.disc[0] - 0.15 * layout.disc_radius, layout.disc[1]
    arc_radius = dd * rng.uniform(1.75, 2.1, 2)
    w0 = {True: 0.095 * dd * rng.uniform(0.9, 1.1), False: 0.072 * dd * rng.uniform(0.9, 1.1)}
    for side in (-1, 1):  # -1 superior, +1 inferior; veins and arteries alternate to share the budget
        for vein in (True, False):
            heading = side * math.radians(rng.uniform(60, 85) + (6 if vein else -6))
            rho = arc_radius[(side + 1) // 2] * (rng.uniform(1.08, 1.16) if vein else 1.0)
            _grow(layout, rng, out, ox, oy, heading, w0[vein], vein, 0, _arcade_steer(layout, side, rho, rng))
        for vein in (True, False):
            heading = side * math.radians(rng.uniform(105, 150))
            _grow(layout, rng, out, ox, oy, heading, w0[vein] * rng.uniform(0.65, 0.85), vein, 0, None)
    for vein in (True, False):
        _grow(layout, rng, out, ox, oy, math.pi + rng.normal(0, 0.25), w0[vein] * 0.5, vein, 1, None)
        _grow(layout, rng, out, ox, oy, rng.normal(0, 0.2), w0[vein] * 0.4, vein, 1, None)
    return out


def _arcade_steer(layout: Layout, side: int, rho: float, rng: np.random.Generator) -> _StepFn:
    """Heading that keeps a trunk on an arc of radius ``rho`` about the fovea, then lets it run free."""
    fx, fy = layout.fovea
    end = math.radians(rng.uniform(110, 150))

    def steer(x: float, y: float) -> float | None:
        phi = math.atan2(y - fy, x - fx)
        sweep = ((phi - math.pi) * -side) % (2 * math.pi)
        if end < sweep < 1.5 * math.pi:
            return None
        dist = math.hypot(x - fx, y - fy)
        correction = max(-0.7, min(0.7, 0.8 * (dist - rho) / rho))
        return phi - side * (math.pi / 2 + correction)

    return steer


def _grow(layout: Layout, rng: np.random.Generator, out: list[Vessel], x: float, y: float,
          heading: float, width: float, vein: bool, depth: int, steer: _StepFn | None) -> None:
    """Grow one vessel as a smooth random curve, recursing into side branches."""
    radius, (cx, cy), (fx, fy), (dx, dy) = layout.radius, layout.centre, layout.fovea, layout.disc
    step = 0.03 * radius
    w_min, faz = max(0.5, 0.0015 * layout.size), (0.35 * 2 * layout.disc_radius) ** 2
    n_max = int(1.6 * radius / step)
    noise = rng.normal(0.0, 0.05, n_max)
    decay = math.exp(-step / (radius * (2.5 if depth == 0 else 1.2)))
    xs, ys, ws = [x], [y], [width]
    curv, travelled, side = 0.0, 0.0, 1 if rng.random() < 0.5 else -1
    next_branch = radius * rng.uniform(0.12, 0.24)
    for i in range(n_max):
        curv = 0.8 * curv + noise[i]
        target = steer(x, y) if steer else None
        gain = 0.25 if target is not None else 0.03
        if target is None:
            target = math.atan2(y - dy, x - dx)  # fan out from the disc
        heading += 0.5 * curv + gain * (math.remainder(target - heading, 2 * math.pi))
        x, y = x + step * math.cos(heading), y + step * math.sin(heading)
        travelled += step
        width *= decay
        xs.append(x)
        ys.append(y)
        ws.append(width)
        if (x - cx) ** 2 + (y - cy) ** 2 > radius ** 2 or (x - fx) ** 2 + (y - fy) ** 2 < faz or width < w_min:
            break
        if travelled >= next_branch and depth < 4 and len(out) < 80:
            child = width * rng.uniform(0.45, 0.75)
            if child >= w_min:
                _grow(layout, rng, out, x, y, heading + side * rng.uniform(0.45, 1.1), child, vein,
                      depth + 1, None)
                width *= rng.uniform(0.88, 0.96)
                heading -= side * 0.12
                side = -side
            next_branch = travelled + radius * rng.uniform(0.12, 0.26)
    out.append(Vessel(np.column_stack([xs, ys]), np.asarray(ws), vein, depth))


def draw_vessel(mask: np.ndarray, vessel: Vessel) -> None:
    """Anti-aliased polyline whose integer thickness and opacity follow the calibre."""
    w = vessel.widths
    thick = np.maximum(1, np.round(w)).astype(int)
    # Opacity in eighths: below 1 px it stands in for the calibre; thin vessels show less contrast.
    level = np.clip(np.round(8 * np.minimum(1.0, 0.3 + 0.22 * w) * np.minimum(1.0, w)), 1, 8).astype(int)
    key = thick * 16 + level
    pts = np.round(vessel.points * (1 << _SHIFT)).astype(np.int32)
    starts = np.flatnonzero(np.diff(key, prepend=-1))
    for a, b in zip(starts, [*starts[1:], len(key)]):
        run = pts[a: b + 1]
        if len(run) >= 2:
            cv2.polylines(mask, [run], False, int(level[a]) * 255 // 8, int(thick[a]), cv2.LINE_AA, _SHIFT)
