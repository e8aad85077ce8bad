"""Batched, sub-pixel phase correlation on rfft2 spectra, with its window and Gaussian low-pass."""

from __future__ import annotations

import functools
import math

import numpy as np
import scipy.fft as sfft


@functools.lru_cache(maxsize=32)
def _hann2d(h: int, w: int) -> np.ndarray:
    """Separable float32 Hann window of shape ``(h, w)`` with no zero at the border."""
    return np.outer(np.hanning(h + 2)[1:-1], np.hanning(w + 2)[1:-1]).astype(np.float32)


@functools.lru_cache(maxsize=32)
def _gauss_lowpass(h: int, w: int, sigma: float) -> tuple[np.ndarray, float]:
    """Frequency response of a spatial Gaussian (sigma px) on the rfft2 grid of
    an h x w image, and its mean over the full FFT grid (= correlation peak of
    identical inputs)."""
    fy = sfft.fftfreq(h)[:, None]
    g = lambda fx: np.exp(-2.0 * (math.pi * sigma) ** 2 * (fx * fx + fy * fy))  # noqa: E731
    full_mean = float(g(sfft.fftfreq(w)[None, :]).mean())
    return g(sfft.rfftfreq(w)[None, :]).astype(np.float32), full_mean


def _subpixel(c_m: np.ndarray, c_0: np.ndarray, c_p: np.ndarray) -> np.ndarray:
    """Vectorised 3-point Gaussian (log-parabola) peak offset, parabola fallback."""
    tiny = 1e-12
    ok = (c_m > tiny) & (c_0 > tiny) & (c_p > tiny)
    with np.errstate(divide="ignore", invalid="ignore"):
        lm, l0, lp = (np.log(np.maximum(v, tiny)) for v in (c_m, c_0, c_p))
        den_g = lm - 2.0 * l0 + lp
        d_g = 0.5 * (lm - lp) / den_g
        den_p = c_m - 2.0 * c_0 + c_p
        d_p = 0.5 * (c_m - c_p) / den_p
    d = np.where(ok & (den_g < 0), d_g, np.where(den_p < 0, d_p, 0.0))
    return np.clip(np.nan_to_num(d), -0.5, 0.5)


def _spectrum(img: np.ndarray, win: np.ndarray) -> np.ndarray:
    """rfft2 of the mean-removed, windowed image(s) (last two axes)."""
    a = img - img.mean(axis=(-2, -1), keepdims=True)
    return sfft.rfft2(a * win, axes=(-2, -1), workers=1)


def _phase_corr(
    fa: np.ndarray, fb: np.ndarray, shape: tuple[int, int], lowpass: tuple[np.ndarray, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched phase correlation of rfft2 spectra ``fa``, ``fb`` (..., H, W//2+1).

    Returns (dy, dx, peak): the peak of ``ifft(fa conj(fb) / |.|)`` at ``t``
    means ``a(p) ~ b(p - t)``.  ``peak`` is normalised so that identical
    inputs give 1.  Sub-pixel position by a 3-point Gaussian fit per axis
    (the cross-power spectrum is Gaussian-weighted, so the peak is Gaussian).
    """
    h, w = shape
    gain, norm = lowpass
    cross = fa * np.conj(fb)
    cross /= np.abs(cross) + 1e-12
    cross *= gain
    corr = sfft.irfft2(cross, s=(h, w), axes=(-2, -1), workers=1)
    corr /= norm
    flat = corr.reshape(-1, h * w)
    idx = np.argmax(flat, axis=-1)
    iy, ix = np.divmod(idx, w)
    rows = np.arange(flat.shape[0])
    peak = flat[rows, idx]

    def at(dy: int, dx: int) -> np.ndarray:
        return flat[rows, ((iy + dy) % h) * w + (ix + dx) % w]

    sy = _subpixel(at(-1, 0), peak, at(1, 0))
    sx = _subpixel(at(0, -1), peak, at(0, 1))
    dy = np.where(iy > h // 2, iy - h, iy) + sy
    dx = np.where(ix > w // 2, ix - w, ix) + sx
    out_shape = corr.shape[:-2]
    return (dy.reshape(out_shape).astype(np.float64), dx.reshape(out_shape).astype(np.float64),
            peak.reshape(out_shape).astype(np.float64))
