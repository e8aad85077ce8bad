"""Warping his into the pixel grid of cur: the public :func:`warp_to_cur` and the estimators' grayscale warp."""

from __future__ import annotations

import numpy as np
from skimage.transform import warp as _sk_warp

from ._image import _validate
from ._types import Registration


def _warp_gray(img: np.ndarray, m: np.ndarray, shape: tuple[int, int], cval: float) -> np.ndarray:
    """Bilinear float32 warp of a grayscale image: ``out[y, x] = img(m @ (x, y, 1))``, ``cval`` outside."""
    return _sk_warp(
        img, m, output_shape=shape, order=1, mode="constant", cval=cval, preserve_range=True
    ).astype(np.float32, copy=False)


def _valid_mask(m: np.ndarray, out_shape: tuple[int, int], src_shape: tuple[int, int]) -> np.ndarray:
    """Bool ``out_shape`` mask of the output pixels whose source ``m @ (x, y, 1)`` lies inside ``src_shape``."""
    h, w = out_shape
    sh, sw = src_shape
    x = np.arange(w, dtype=np.float64)[None, :]
    y = np.arange(h, dtype=np.float64)[:, None]
    eps = 1e-4
    if m[2, 0] == 0 and m[2, 1] == 0:
        mm = m / m[2, 2]
        # separable rows/cols terms, summed in float32 (cheap for large images)
        xs = (mm[0, 0] * x).astype(np.float32) + (mm[0, 1] * y + mm[0, 2]).astype(np.float32)
        ys = (mm[1, 0] * x).astype(np.float32) + (mm[1, 1] * y + mm[1, 2]).astype(np.float32)
        return (xs >= -eps) & (xs <= sw - 1 + eps) & (ys >= -eps) & (ys <= sh - 1 + eps)
    den = m[2, 0] * x + m[2, 1] * y + m[2, 2]
    xs = (m[0, 0] * x + m[0, 1] * y + m[0, 2]) / den
    ys = (m[1, 0] * x + m[1, 1] * y + m[1, 2]) / den
    return (xs >= -eps) & (xs <= sw - 1 + eps) & (ys >= -eps) & (ys <= sh - 1 + eps) & (den > 0)


def warp_to_cur(
    his: np.ndarray, reg: Registration, output_shape: tuple[int, int], order: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``his`` into the pixel grid of cur.

    ``out[y, x] = his(reg.matrix @ (x, y, 1))``.  Returns ``(warped, valid)``:
    ``warped`` has shape ``output_shape`` (+ his' channel axis), the dtype of
    ``his`` (integers are rounded and clipped) and zeros outside his;
    ``valid`` is a bool HxW mask of the pixels whose source lies inside his.
    ``reg`` must be expressed in the pixel units of ``his`` / ``output_shape``
    (see :meth:`Registration.scaled`).
    """
    his = _validate(his, "his")
    if len(output_shape) < 2:
        raise ValueError(f"output_shape must be (H, W), got {output_shape}")
    out_hw = (int(output_shape[0]), int(output_shape[1]))
    if out_hw[0] <= 0 or out_hw[1] <= 0:
        raise ValueError(f"output_shape must be positive, got {output_shape}")
    if order not in (0, 1, 2, 3):
        raise ValueError(f"order must be 0..3, got {order}")
    m = np.asarray(reg.matrix, dtype=np.float64)
    squeeze = his.ndim == 2
    src = his[:, :, None] if squeeze else his
    out = np.empty(out_hw + (src.shape[2],), dtype=his.dtype)
    is_int = np.issubdtype(his.dtype, np.integer)
    for c in range(src.shape[2]):
        chan = src[:, :, c]
        if chan.dtype != np.float64:
            chan = chan.astype(np.float32)
        elif not chan.flags.writeable:  # skimage's Cython warp needs writable buffers
            chan = chan.copy()
        wc = _sk_warp(chan, m, output_shape=out_hw, order=order, mode="constant", cval=0.0,
                      preserve_range=True)
        if is_int:
            np.rint(wc, out=wc)
            if order > 1:  # spline overshoot
                info = np.iinfo(his.dtype)
                np.clip(wc, info.min, info.max, out=wc)
            out[:, :, c] = wc
        elif his.dtype == bool:
            out[:, :, c] = wc >= 0.5
        else:
            out[:, :, c] = wc
    if squeeze:
        out = out[:, :, 0]
    valid = _valid_mask(m, out_hw, his.shape[:2])
    return out, valid
