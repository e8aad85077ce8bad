"""Fourier-Mellin: rotation and scale of cur -> his from the phase correlation of log-polar FFT magnitudes.

The FFT magnitude is translation invariant, and in log-polar coordinates a rotation and a scale of the image
become a shift along the angle and log-radius axes, which a phase correlation measures.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import scipy.fft as sfft

from ._image import _downscale
from ._phase_correlation import _gauss_lowpass, _hann2d, _phase_corr, _spectrum

_FM_SIZE = 128  # FFT side for rotation/scale (coarse: the refinement does the rest)
_FM_ANGLES = 180  # samples over [0, pi)  -> 1 deg / row
_FM_RADII = 96
_FM_RMIN, _FM_RMAX = 3.0, 0.45  # in FFT bins / fraction of N


@functools.lru_cache(maxsize=8)
def _logpolar_plan(n: int, n_ang: int, n_rad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Bilinear sampling plan of an n x n image's rfft2 magnitude (rows
    fftshifted, so the array is n x (n//2+1) with DC at (n//2, 0)) on a
    log-polar grid covering angles [-pi/2, pi/2) -- a full period of the
    (point-symmetric) magnitude.

    Returns (flat indices (4, N), bilinear weights (4, N), high-pass x radial taper (n_ang, n_rad), log-radius step).
    """
    c = n // 2
    wc = n // 2 + 1
    r_min, r_max = _FM_RMIN, _FM_RMAX * n
    log_step = math.log(r_max / r_min) / (n_rad - 1)
    r = r_min * np.exp(log_step * np.arange(n_rad))
    phi = np.pi * np.arange(n_ang) / n_ang - np.pi / 2
    y = c + np.sin(phi)[:, None] * r[None, :]
    x = np.cos(phi)[:, None] * r[None, :]
    y0 = np.clip(np.floor(y).astype(np.intp), 0, n - 2)
    x0 = np.clip(np.floor(x).astype(np.intp), 0, wc - 2)
    wy = (y - y0).astype(np.float32)
    wx = (x - x0).astype(np.float32)
    i00 = (y0 * wc + x0).ravel()
    w = np.stack([(1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx]).reshape(4, -1)
    idx = np.stack([i00, i00 + 1, i00 + wc, i00 + wc + 1])
    # high-pass emphasis (Reddy & Chatterji) sampled on the same grid, times a
    # radial taper (the radial axis is not periodic)
    fy = (y - c) / n
    fx = x / n
    xx = np.cos(np.pi * fy) * np.cos(np.pi * fx)
    hp = ((1.0 - xx) * (2.0 - xx)).astype(np.float32)
    radial_win = np.hanning(n_rad + 2)[1:-1].astype(np.float32)[None, :]
    return idx, w.astype(np.float32), hp * radial_win, log_step


def _fm_logpolar(img: np.ndarray) -> tuple[np.ndarray, float]:
    """High-passed log-polar FFT magnitude of the central square of ``img``."""
    h, w = img.shape
    s = min(h, w)
    oy, ox = (h - s) // 2, (w - s) // 2
    crop = img[oy : oy + s, ox : ox + s]
    if s > _FM_SIZE:
        crop, _ = _downscale(crop, _FM_SIZE / s)
    n = crop.shape[0]
    mag = np.abs(sfft.fftshift(_spectrum(crop, _hann2d(n, n)), axes=0))
    idx, wts, hp, log_step = _logpolar_plan(n, _FM_ANGLES, _FM_RADII)
    flat = np.log(mag / (float(mag.mean()) + 1e-30) + 1e-2).ravel()  # intensity-scale invariant
    lp = (flat[idx] * wts).sum(axis=0).reshape(_FM_ANGLES, _FM_RADII)
    return lp * hp, log_step


def _fourier_mellin(cur: np.ndarray, his: np.ndarray) -> tuple[float, float]:
    """(rotation in radians, scale) of the cur->his linear part."""
    lc, log_step = _fm_logpolar(cur)
    lh, _ = _fm_logpolar(his)
    lowpass = _gauss_lowpass(_FM_ANGLES, _FM_RADII, 0.7)
    fa = sfft.rfft2(lc - lc.mean(), workers=1)
    fb = sfft.rfft2(lh - lh.mean(), workers=1)
    t_phi, t_rho, _ = _phase_corr(fa, fb, lc.shape, lowpass)
    theta = -float(t_phi) * math.pi / _FM_ANGLES
    scale = math.exp(float(t_rho) * log_step)
    return theta, scale
