"""Geometry helpers: signed distances, curves, boxes and their clipping, affine inversion."""

from __future__ import annotations

import math

import numpy as np

from ._constants import _F32


def _sd_box(u, v, hw, hh, rc=0.0):
    """Signed distance to a rounded box of half sizes (hw, hh) centred at the origin."""
    rc = min(rc, hw, hh)
    qx = np.abs(u) - (hw - rc)
    qy = np.abs(v) - (hh - rc)
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - rc


def _sd_hex(u, v, apothem):
    """Signed distance to a regular hexagon (flat top and bottom) of the given inner radius."""
    kx, ky, kz = -0.866025404, 0.5, 0.577350269
    px, py = np.abs(u), np.abs(v)
    d = 2 * np.minimum(kx * px + ky * py, 0)
    px, py = px - d * kx, py - d * ky
    px = px - np.clip(px, -kz * apothem, kz * apothem)
    py = py - apothem
    return np.hypot(px, py) * np.sign(py)


def _seg_dist(xs, ys, ax, ay, bx, by):
    """Distance from the points (xs, ys) to the segment (ax, ay)-(bx, by)."""
    dx, dy = bx - ax, by - ay
    L2 = dx * dx + dy * dy
    if L2 < 1e-9:
        return np.hypot(xs - ax, ys - ay)
    t = np.clip(((xs - ax) * dx + (ys - ay) * dy) / L2, 0, 1)
    return np.hypot(xs - ax - t * dx, ys - ay - t * dy)


def _polyline_dist(pts: np.ndarray, x0: int, y0: int, w: int, h: int, reach: float) -> np.ndarray:
    """Distance from pixel centres of the box (x0, y0, w, h) to a polyline, computed per segment in its bbox."""
    d = np.full((h, w), np.inf, _F32)
    for (ax, ay), (bx, by) in zip(pts[:-1], pts[1:]):
        sx0 = max(int(math.floor(min(ax, bx) - reach)) - x0, 0)
        sy0 = max(int(math.floor(min(ay, by) - reach)) - y0, 0)
        sx1 = min(int(math.ceil(max(ax, bx) + reach)) - x0 + 1, w)
        sy1 = min(int(math.ceil(max(ay, by) + reach)) - y0 + 1, h)
        if sx0 >= sx1 or sy0 >= sy1:
            continue
        xs = np.arange(x0 + sx0, x0 + sx1, dtype=_F32)[None, :] + 0.5
        ys = np.arange(y0 + sy0, y0 + sy1, dtype=_F32)[:, None] + 0.5
        np.minimum(d[sy0:sy1, sx0:sx1], _seg_dist(xs, ys, ax, ay, bx, by), out=d[sy0:sy1, sx0:sx1])
    return d


def _edge_point(rng: np.random.Generator, W: int, H: int, out: float) -> tuple[float, float]:
    """A point just outside a random edge of a W x H frame."""
    side = int(rng.integers(4))
    if side < 2:
        return float(rng.uniform(0, W)), (-out if side == 0 else H + out)
    return (-out if side == 2 else W + out), float(rng.uniform(0, H))


def _bezier(p: np.ndarray, n: int = 40) -> np.ndarray:
    """``n`` points along the cubic Bezier curve of the four control points ``p``."""
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t**2 * p[2] + t**3 * p[3]


def _clip_boxes(x0, y0, h, w, win):
    """Intersect a patch at (x0, y0) of size (h, w) with a window (wx0, wy0, wx1, wy1): slices or None."""
    ax0, ay0 = max(x0, win[0]), max(y0, win[1])
    ax1, ay1 = min(x0 + w, win[2]), min(y0 + h, win[3])
    if ax0 >= ax1 or ay0 >= ay1:
        return None
    return (
        (slice(ay0 - win[1], ay1 - win[1]), slice(ax0 - win[0], ax1 - win[0])),
        (slice(ay0 - y0, ay1 - y0), slice(ax0 - x0, ax1 - x0)),
    )


def _patch_window(x0: int, y0: int, h: int, w: int, Wc: int, Hc: int):
    """Window of a Wc x Hc canvas covering a patch at (x0, y0), clipped: (win, dst slices, patch slices) or None."""
    win = (max(x0, 0), max(y0, 0), min(x0 + w, Wc), min(y0 + h, Hc))
    cl = _clip_boxes(x0, y0, h, w, win)
    return None if cl is None else (win, *cl)


def _tight(a: np.ndarray, thr: float) -> tuple[int, int, int, int] | None:
    """Bounding box (r0, r1, c0, c1) of the entries of ``a`` above ``thr`` (None if none)."""
    rows = np.flatnonzero(a.max(1) > thr)
    if rows.size == 0:
        return None
    cols = np.flatnonzero(a.max(0) > thr)
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _disk(r: int) -> np.ndarray:
    """Boolean disk structuring element of radius ``r``."""
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r + 0.5


def _invert_affine(data):
    """Inverse of PIL AFFINE data (a, b, c, d, e, f)."""
    a, b, c, d, e, f = data
    det = a * e - b * d
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    return (ia, ib, -(ia * c + ib * f), id_, ie, -(id_ * c + ie * f))
