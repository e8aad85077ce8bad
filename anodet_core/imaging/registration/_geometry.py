"""Homogeneous 3x3 matrices: applying, composing, decomposing, and the plausibility of a night-to-night transform."""

from __future__ import annotations

import math

import numpy as np

# Plausibility bounds for an accepted transform (nightly captures of the same
# region never move more than this).
MAX_ROTATION_DEG = 10.0
MIN_SCALE, MAX_SCALE = 0.85, 1.15
MAX_SHIFT_FRACTION = 0.25
MAX_ANISOTROPY = 1.15  # ratio of singular values of the linear part (affine/projective)
MAX_PERSPECTIVE = 0.05  # |h20|*W + |h21|*H  (projective)


def _apply(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Map ``(N, 2)`` points ``(x, y)`` through the homogeneous matrix ``m``."""
    xy = np.atleast_2d(xy)
    h = xy @ m[:2, :2].T + m[:2, 2]
    w = xy @ m[2, :2] + m[2, 2]
    return h / w[:, None]


def _translation(tx: float, ty: float) -> np.ndarray:
    """Homogeneous matrix of the translation by ``(tx, ty)``."""
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def _decompose(m: np.ndarray) -> tuple[float, float, float]:
    """(rotation in degrees, isotropic scale, singular-value anisotropy)."""
    a = m[:2, :2] / m[2, 2]
    rot = math.degrees(math.atan2(a[1, 0] - a[0, 1], a[0, 0] + a[1, 1]))
    det = float(np.linalg.det(a))
    scale = math.sqrt(abs(det)) if det > 0 else float("nan")
    sv = np.linalg.svd(a, compute_uv=False)
    aniso = float(sv[0] / sv[1]) if sv[1] > 0 else float("inf")
    return rot, scale, aniso


def _max_disp(a: np.ndarray, b: np.ndarray, shape: tuple[int, int]) -> float:
    """Largest distance between the images of the corners of ``shape`` under a and b."""
    h, w = shape
    c = np.array([[0.0, 0.0], [w - 1.0, 0.0], [0.0, h - 1.0], [w - 1.0, h - 1.0]])
    return float(np.max(np.linalg.norm(_apply(a, c) - _apply(b, c), axis=1)))


def _plausible(m: np.ndarray, shape: tuple[int, int]) -> bool:
    """Whether ``m`` (cur->his, pixel units of an image of ``shape``) is a
    plausible night-to-night viewpoint change."""
    if not np.all(np.isfinite(m)) or abs(m[2, 2]) < 1e-12:
        return False
    h, w = shape
    rot, scale, aniso = _decompose(m)
    if not (abs(rot) <= MAX_ROTATION_DEG and MIN_SCALE <= scale <= MAX_SCALE):
        return False
    if aniso > MAX_ANISOTROPY:
        return False
    p = m / m[2, 2]
    if abs(p[2, 0]) * w + abs(p[2, 1]) * h > MAX_PERSPECTIVE:
        return False
    c = np.array([[(w - 1) / 2.0, (h - 1) / 2.0]])
    d = _apply(m, c)[0] - c[0]
    return abs(d[0]) <= MAX_SHIFT_FRACTION * w and abs(d[1]) <= MAX_SHIFT_FRACTION * h
