"""Rasterising helpers on Pillow: anti-aliased polylines and polygons, rotation and blur of float fields."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ._constants import _F32


def _draw_polyline_alpha(pts_local: np.ndarray, w: int, h: int, width_px: float, ss: int = 2) -> np.ndarray:
    """Coverage of a polyline of ``width_px`` in a (h, w) patch, drawn supersampled ``ss`` times."""
    img = Image.new("L", (w * ss, h * ss), 0)
    ImageDraw.Draw(img).line([tuple(p) for p in (pts_local * ss).tolist()], fill=255, width=max(1, int(round(width_px * ss))), joint="curve")
    return np.asarray(img.resize((w, h), Image.Resampling.BOX)).astype(_F32) / 255


def _poly_alpha(poly, P: int, ss: int = 3) -> np.ndarray:
    """Coverage of a polygon in a P x P patch, drawn supersampled ``ss`` times."""
    img = Image.new("L", (P * ss, P * ss), 0)
    ImageDraw.Draw(img).polygon([(x * ss, y * ss) for x, y in poly], fill=255)
    return np.asarray(img.resize((P, P), Image.Resampling.BOX)).astype(_F32) / 255


def _rotate_f(a: np.ndarray, deg: float) -> np.ndarray:
    """A float32 field rotated by ``deg`` (bilinear), the canvas expanded to hold it."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(a, dtype=_F32)).rotate(deg, Image.Resampling.BILINEAR, expand=True))


def _blur_alpha(alpha: np.ndarray, sigma: float, pad: int) -> np.ndarray:
    """A coverage field padded by ``pad`` and Gaussian-blurred (through 8 bits, as the shadows always were)."""
    a = np.pad(np.clip(alpha * 255 + 0.5, 0, 255).astype(np.uint8), pad)
    if sigma >= 0.3:
        a = np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(sigma)))
    return a.astype(_F32) / 255
