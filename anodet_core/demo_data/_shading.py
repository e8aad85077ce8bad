"""Shading and compositing: Lambert + Blinn-Phong of height fields, soft drop shadows, parts over a canvas."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._constants import _F32
from ._geometry import _clip_boxes
from ._raster import _blur_alpha


@dataclass
class _Part:
    """A rendered part (or foreign object) at (x0, y0) of the canonical frame, with its shadow at (sx0, sy0)."""

    kind: str
    x0: int
    y0: int
    rgb: np.ndarray  # (h, w, 3) float32, shaded colour
    alpha: np.ndarray  # (h, w) float32 coverage
    shadow: np.ndarray | None = None  # (hs, ws) float32 darkening in [0, 1)
    sx0: int = 0
    sy0: int = 0
    hole: tuple[float, float, float, float] | None = None  # bolts: (cx, cy, head radius, footprint radius)


def shade(height, albedo, light, half, amb=0.35, spec=0.2, shin=20.0):
    """Lambert + Blinn-Phong of a height field (px units); a flat surface gets exactly its albedo, so only the
    pixels with a slope are shaded."""
    height = np.asarray(height, _F32)
    rgb = np.array(np.broadcast_to(albedo, height.shape + (3,)), _F32)
    if min(height.shape) < 2:  # a sliver clipped by the canvas edge
        return rgb
    gy, gx = np.gradient(height)
    sel = (gx != 0) | (gy != 0)
    if not sel.any():
        return rgb
    gx, gy = gx[sel], gy[sel]
    inv = 1.0 / np.sqrt(1.0 + gx * gx + gy * gy)
    lx, ly, lz = (float(t) for t in light)
    ndl = np.clip((-gx * lx - gy * ly + lz) * inv, 0, None)
    out = rgb[sel] * (amb + (1 - amb) * ndl / lz)[:, None]
    if spec > 0:
        hx, hy, hz = (float(t) for t in half)
        ndh = np.clip((-gx * hx - gy * hy + hz) * inv, 0, 1)
        out += (spec * 255 * np.clip(ndh**shin - hz**shin, 0, None))[:, None]
    rgb[sel] = out
    return rgb


def _shadow(alpha, x0, y0, obj_h, light, strength):
    """Soft drop shadow of a coverage at (x0, y0) raised ``obj_h`` px: (darkening, its x0, its y0)."""
    dx = -float(light[0]) / float(light[2]) * obj_h
    dy = -float(light[1]) / float(light[2]) * obj_h
    sig = 0.8 + 0.35 * obj_h
    pad = int(math.ceil(2.5 * sig)) + 1
    sh = _blur_alpha(alpha, sig, pad) * strength
    return sh, x0 - pad + int(round(dx)), y0 - pad + int(round(dy))


def _composite(dst: np.ndarray, win: tuple[int, int, int, int], p: _Part) -> None:
    """Shadow then colour of part ``p`` over ``dst`` (float32), whose origin and extent are ``win``."""
    if p.shadow is not None:
        hs, ws = p.shadow.shape
        cl = _clip_boxes(p.sx0, p.sy0, hs, ws, win)
        if cl is not None:
            (dy, dx), (py, px) = cl
            dst[dy, dx] *= (1 - p.shadow[py, px])[..., None]
    h, w = p.alpha.shape
    cl = _clip_boxes(p.x0, p.y0, h, w, win)
    if cl is not None:
        (dy, dx), (py, px) = cl
        d = dst[dy, dx]
        t = p.rgb[py, px] - d
        t *= p.alpha[py, px][..., None]
        d += t


def _to_u8(a: np.ndarray) -> np.ndarray:
    """Round a float image to uint8 (clipped)."""
    a = a + 0.5
    np.clip(a, 0, 255, out=a)
    return a.astype(np.uint8)


def _or_mask(mask_c: np.ndarray, m: np.ndarray, x0: int, y0: int) -> None:
    """Set ``mask_c`` to 255 where the boolean patch ``m`` at (x0, y0) is true (clipped)."""
    h, w = m.shape
    cl = _clip_boxes(x0, y0, h, w, (0, 0, mask_c.shape[1], mask_c.shape[0]))
    if cl is not None:
        (dy, dx), (py, px) = cl
        mask_c[dy, dx][m[py, px]] = 255
