"""Input validation, grayscale conversion and exact area downscaling of the images to register."""

from __future__ import annotations

import functools
import math

import numpy as np
import scipy.sparse as sp

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _validate(img: np.ndarray, name: str) -> np.ndarray:
    """``img`` as an array if it is a real, numeric, non-degenerate HxW or HxWxC image; ``ValueError`` otherwise."""
    img = np.asarray(img)
    if img.ndim not in (2, 3):
        raise ValueError(f"{name} must be HxW or HxWxC, got shape {img.shape}")
    if img.size == 0 or img.shape[0] < 2 or img.shape[1] < 2:
        raise ValueError(f"{name} is empty or degenerate: shape {img.shape}")
    if img.ndim == 3 and img.shape[2] == 0:
        raise ValueError(f"{name} has no channels: shape {img.shape}")
    if not (np.issubdtype(img.dtype, np.number) or img.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {img.dtype}")
    if np.iscomplexobj(img):
        raise ValueError(f"{name} must be real valued, got dtype {img.dtype}")
    return img


def _channels(img: np.ndarray) -> int:
    """Number of channels of an HxW (1) or HxWxC (C) image."""
    return 1 if img.ndim == 2 else img.shape[2]


def _to_gray(img: np.ndarray) -> np.ndarray:
    """Writable, finite float32 grayscale copy (luma for RGB/RGBA, channel mean otherwise)."""
    if img.ndim == 3:
        c = img.shape[2]
        if c == 1:
            img = img[:, :, 0]
        elif c in (3, 4):
            img = img[:, :, :3] @ _LUMA
        else:
            img = img.mean(axis=2, dtype=np.float32)
    g = img.astype(np.float32, copy=False)
    if not g.flags.writeable:  # skimage's Cython warp needs writable buffers
        g = g.copy()
    if not np.all(np.isfinite(g)):
        g = np.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
    return g


@functools.lru_cache(maxsize=32)
def _area_matrix(n_in: int, n_out: int) -> sp.csr_matrix:
    """(n_out, n_in) sparse matrix averaging input cells over output cells."""
    ratio = n_in / n_out
    rows, cols, vals = [], [], []
    for j in range(n_out):
        lo, hi = j * ratio, (j + 1) * ratio
        i0, i1 = int(math.floor(lo)), min(int(math.ceil(hi)), n_in)
        for i in range(i0, i1):
            ov = min(hi, i + 1) - max(lo, i)
            if ov > 1e-9:
                rows.append(j)
                cols.append(i)
                vals.append(ov / ratio)
    return sp.csr_matrix(
        (np.asarray(vals, np.float32), (rows, cols)), shape=(n_out, n_in)
    )


def _downscale(g: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Area downscale; returns (image, S) with S mapping input px -> output px."""
    h, w = g.shape
    if factor >= 1.0:
        return np.ascontiguousarray(g), np.eye(3)
    ho, wo = max(2, int(round(h * factor))), max(2, int(round(w * factor)))
    out = _area_matrix(h, ho) @ g  # (ho, w)
    out = (_area_matrix(w, wo) @ out.T).T  # (ho, wo)
    fy, fx = ho / h, wo / w
    s = np.array([[fx, 0.0, 0.5 * fx - 0.5], [0.0, fy, 0.5 * fy - 0.5], [0.0, 0.0, 1.0]])
    return np.ascontiguousarray(out, dtype=np.float32), s


def _pad_to(g: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``g`` padded at the bottom/right to ``shape`` with its mean (a neutral value for the FFTs)."""
    if g.shape == shape:
        return g
    out = np.full(shape, float(g.mean()), dtype=np.float32)
    out[: g.shape[0], : g.shape[1]] = g
    return out
