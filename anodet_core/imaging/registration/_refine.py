"""Patch refinement: phase correlate a grid of patches of cur and the coarsely warped his, fit the model robustly.

The correspondences are absolute (cur patch centre -> his point), so each iteration's fit does not depend on the
matrix the patches were warped with; patches that disagree (e.g. the ones containing an anomaly) are rejected.
"""

from __future__ import annotations

import functools

import numpy as np

from ._fit import _robust_fit
from ._geometry import _apply
from ._phase_correlation import _gauss_lowpass, _hann2d, _phase_corr, _spectrum
from ._warp import _warp_gray

_MIN_PATCHES = {"translation": 3, "similarity": 4, "affine": 5, "projective": 6}
_PATCH_MIN_PEAK = 0.08
_MAX_PATCH_RESIDUAL = 1.5  # work px; patches further off the fit are outliers
_PATCH_MIN_STD = 1e-3


@functools.lru_cache(maxsize=16)
def _patch_grid(h: int, w: int, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners (N, 2) as (row, col) and centres (N, 2) as (x, y)."""
    margin = max(2, p // 8)
    ny = max(1, (h - 2 * margin) // p)
    nx = max(1, (w - 2 * margin) // p)
    oy = (h - ny * p) // 2
    ox = (w - nx * p) // 2
    ys = oy + p * np.arange(ny)
    xs = ox + p * np.arange(nx)
    tl = np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
    centres = np.stack([tl[:, 1] + (p - 1) / 2.0, tl[:, 0] + (p - 1) / 2.0], 1).astype(np.float64)
    return tl, centres


def _patches(img: np.ndarray, tl: np.ndarray, p: int) -> np.ndarray:
    """The ``(N, p, p)`` patches of ``img`` at the grid corners ``tl`` of :func:`_patch_grid` (a reshaped view)."""
    ny = len(np.unique(tl[:, 0]))
    nx = len(tl) // ny
    y0, x0 = tl[0]
    block = img[y0 : y0 + ny * p, x0 : x0 + nx * p]
    return block.reshape(ny, p, nx, p).transpose(0, 2, 1, 3).reshape(ny * nx, p, p)


def _patch_size(h: int, w: int) -> int:
    """Largest listed patch side p with the short side >= 5p and the long side >= 8p (else a third of the short side)."""
    side = min(h, w)
    for p in (64, 48, 40, 32, 24, 16):
        if side >= 5 * p and max(h, w) >= 8 * p:
            return p
    return max(8, side // 3)


def _refine(
    cur: np.ndarray, his: np.ndarray, m: np.ndarray, model: str, iterations: int = 3
) -> tuple[np.ndarray, int, float, int, tuple[np.ndarray, np.ndarray] | None] | None:
    """Patch phase-correlation refinement of ``m`` (cur->his, work px).

    Returns (matrix, n_inlier_patches, rms residual px, n_usable_patches,
    (last warped his, matrix it was warped with)) or None.
    """
    h, w = cur.shape
    p = _patch_size(h, w)
    tl, centres = _patch_grid(h, w, p)
    win = _hann2d(p, p)
    lowpass = _gauss_lowpass(p, p, 1.0)
    pc = _patches(cur, tl, p)
    std_c = pc.std(axis=(1, 2))
    fc = _spectrum(pc, win)
    scale_ref = float(np.std(cur)) + 1e-12
    his_mean = float(his.mean())
    need = _MIN_PATCHES[model]
    meas = None
    last_warp = None
    off = np.array([[0, 0], [p - 1, 0], [0, p - 1], [p - 1, p - 1]], np.float64)
    corners = (tl[:, None, ::-1].astype(np.float64) + off[None]).reshape(-1, 2)  # (x, y)
    for _ in range(iterations):
        hw = _warp_gray(his, m, (h, w), cval=his_mean)
        last_warp = (hw, m)
        ph = _patches(hw, tl, p)
        std_h = ph.std(axis=(1, 2))
        mc = _apply(m, corners).reshape(-1, 4, 2)
        inside = ((mc[..., 0] >= 0) & (mc[..., 0] <= his.shape[1] - 1)
                  & (mc[..., 1] >= 0) & (mc[..., 1] <= his.shape[0] - 1))
        usable = (
            inside.all(axis=1)
            & (std_c > _PATCH_MIN_STD * scale_ref)
            & (std_h > _PATCH_MIN_STD * (float(np.std(hw)) + 1e-12))
        )
        if usable.sum() < need:
            break
        ty, tx, peak = _phase_corr(fc[usable], _spectrum(ph[usable], win), (p, p), lowpass)
        good = peak >= _PATCH_MIN_PEAK
        if good.sum() < need:
            break
        # peak at t: cur(p) ~ hw(p - t) = his(m(p - t)); dst is absolute, so
        # the correspondences stay valid whatever m was.
        src = centres[usable][good]
        dst = _apply(m, src - np.stack([tx[good], ty[good]], 1))
        meas = (src, dst, peak[good], int(usable.sum()))
        fit = _robust_fit(src, dst, peak[good], model, need)
        if fit is None:
            break
        step = float(np.max(np.linalg.norm(_apply(fit[0], centres) - _apply(m, centres), axis=1)))
        m = fit[0]
        if step < 0.05:
            break
    if meas is None:
        return None
    src, dst, wts, n_usable = meas
    fit = _robust_fit(src, dst, wts, model, need, _MAX_PATCH_RESIDUAL)
    if fit is None:
        return None
    return fit[0], int(fit[1].sum()), fit[2], n_usable, last_warp
