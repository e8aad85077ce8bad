"""Registration of a history ("his") capture onto the current ("cur") capture.

The robot photographs the same undercarriage region every night; consecutive
captures differ by a small viewpoint change (translation up to a few percent of
the image side, rotation of a couple of degrees, scale of a few percent), by
illumination/gamma, by sensor noise and -- the reason we compare them at all --
by local content changes (anomalies).  :func:`register` estimates the geometric
transform between the two captures so that :func:`warp_to_cur` can resample
``his`` into the pixel grid of ``cur``.

Conventions
-----------
* Points are ``(x, y)`` = ``(column, row)``, pixel centres at integer
  coordinates.
* ``Registration.matrix`` is a 3x3 homogeneous matrix mapping **cur** pixel
  coordinates to **his** pixel coordinates, expressed in the pixel units of the
  arrays that were passed to :func:`register` (use :meth:`Registration.scaled`
  to express it for larger, e.g. native resolution, images).
* Estimation always runs on grayscale copies area-downscaled so that the longer
  side is ``work_size``; the result is converted back exactly (half-pixel
  convention of the area resampler).

Estimators
----------
``"phase"``
    Fourier-Mellin: rotation and scale from the phase correlation of the
    log-polar resampled, high-passed FFT magnitudes (which are translation
    invariant), translation from a phase correlation of the de-rotated images,
    then a refinement: the coarsely aligned images are cut into a grid of
    patches, each patch pair is phase correlated (batched FFT) and the
    requested model is fitted robustly (iteratively re-weighted, outlier
    patches -- e.g. the ones containing an anomaly -- rejected) to the patch
    correspondences.  A few milliseconds per pair.
``"features"``
    ORB key points + descriptor matching (cross check + ratio test) + RANSAC
    with the requested model, then the same patch refinement.  Falls back to
    ``"phase"`` and finally to identity.  Two orders of magnitude slower.
``"auto"`` (default)
    ``"phase"``, accepted when the transform is plausible (|rotation| <= 10 deg,
    scale in [0.85, 1.15], translation of the image centre <= 25 % of the image
    side), enough patches agree and the NCC after alignment is plausible and
    not worse than before; otherwise ``"features"`` under the same checks;
    otherwise identity with ``ok=False``.

A registration that could not be estimated is never silent: it is the
identity with ``ok=False`` and ``method="identity"`` and the caller is
expected to flag the pair.

Cost (one CPU core, 480x300 RGB uint8 pairs): "auto"/"phase" ~9 ms per pair at the default work_size 256,
~11.5 ms at 320 (at 320: max corner error ~0.1 px on synthetic pairs with +-2 deg, +-3 % scale, +-15 px
shift, gamma, noise and local anomalies; on 64 pairs of the 1920x1200 bench night the corners of the 256
estimate lie 0.17 native px (median; max 0.56) from a full-resolution 480 estimate, those of the 320 estimate
0.12 px -- a model pixel is 4.7-7.5 native px); "features" ~90-320 ms; an unregistrable pair in "auto" costs
phase + features (~300 ms).
``warp_to_cur`` costs ~6 ms at 480x300x3 and ~110 ms at 1920x1200x3.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.fft as sfft
import scipy.sparse as sp
from skimage.transform import warp as _sk_warp

__all__ = ["MODELS", "METHODS", "Registration", "register", "warp_to_cur"]

MODELS = ("translation", "similarity", "affine", "projective")
METHODS = ("auto", "phase", "features")

# Plausibility bounds for an accepted transform (nightly captures of the same
# region never move more than this).
MAX_ROTATION_DEG = 10.0
MIN_SCALE, MAX_SCALE = 0.85, 1.15
MAX_SHIFT_FRACTION = 0.25
MAX_ANISOTROPY = 1.15  # ratio of singular values of the linear part (affine/projective)
MAX_PERSPECTIVE = 0.05  # |h20|*W + |h21|*H  (projective)

# Acceptance of an estimate: NCC after alignment must be at least this and
# must not be worse than before alignment by more than _NCC_TOLERANCE.
MIN_NCC_AFTER = 0.2
_NCC_TOLERANCE = 0.01

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_MIN_SIDE = 16  # smallest image side register() accepts
_ESTIMATION_ERRORS = (ValueError, IndexError, RuntimeError, FloatingPointError, np.linalg.LinAlgError)
_MIN_SAMPLES = {"translation": 1, "similarity": 2, "affine": 3, "projective": 4}
_MIN_PATCHES = {"translation": 3, "similarity": 4, "affine": 5, "projective": 6}


# --------------------------------------------------------------------------- #
# Result type
# --------------------------------------------------------------------------- #
@dataclass(frozen=True, eq=False)
class Registration:
    """Result of :func:`register`.

    Attributes
    ----------
    matrix:
        3x3 float64; maps cur pixel coordinates ``(x, y, 1)`` to his pixel
        coordinates, in the pixel units of the arrays passed to ``register``.
    method:
        ``"features"``, ``"phase"`` or ``"identity"`` -- the estimator whose
        result was used.
    ok:
        ``False`` when every estimator failed and the identity was used.
    inliers:
        RANSAC inliers (``0`` for phase/identity).
    residual_px:
        RMS residual of the inlier correspondences used for the final fit
        (RANSAC matches for "features", refinement patches for "phase"), in
        pixels of the arrays passed; ``nan`` for identity.
    ncc_before / ncc_after:
        normalised cross-correlation of the (work size, grayscale) images over
        their overlap before alignment / over the valid mask after alignment.
    """

    matrix: np.ndarray = field(repr=False)
    method: str
    ok: bool
    inliers: int
    residual_px: float
    ncc_before: float
    ncc_after: float

    def __post_init__(self) -> None:
        m = np.array(self.matrix, dtype=np.float64, copy=True)
        if m.shape != (3, 3):
            raise ValueError(f"matrix must be 3x3, got shape {m.shape}")
        m.setflags(write=False)
        object.__setattr__(self, "matrix", m)

    def scaled(self, factor: float) -> Registration:
        """Same transform for images ``factor`` times larger (both cur and his).

        The matrix is conjugated by ``S = diag(factor, factor, 1)``:
        ``S @ matrix @ inv(S)``; ``residual_px`` is multiplied by ``factor``.
        """
        factor = float(factor)
        if not math.isfinite(factor) or factor <= 0:
            raise ValueError(f"factor must be a positive finite number, got {factor}")
        s = np.diag([factor, factor, 1.0])
        s_inv = np.diag([1.0 / factor, 1.0 / factor, 1.0])
        return Registration(
            matrix=s @ self.matrix @ s_inv,
            method=self.method,
            ok=self.ok,
            inliers=self.inliers,
            residual_px=self.residual_px * factor,
            ncc_before=self.ncc_before,
            ncc_after=self.ncc_after,
        )

    # Convenience ----------------------------------------------------------
    def map_points(self, xy: np.ndarray) -> np.ndarray:
        """Map ``(N, 2)`` cur points ``(x, y)`` to his coordinates."""
        return _apply(self.matrix, np.asarray(xy, dtype=np.float64))

    @property
    def rotation_deg(self) -> float:
        return _decompose(self.matrix)[0]

    @property
    def scale(self) -> float:
        return _decompose(self.matrix)[1]


# --------------------------------------------------------------------------- #
# Small helpers
# --------------------------------------------------------------------------- #
def _apply(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    xy = np.atleast_2d(xy)
    h = xy @ m[:2, :2].T + m[:2, 2]
    w = xy @ m[2, :2] + m[2, 2]
    return h / w[:, None]


def _translation(tx: float, ty: float) -> np.ndarray:
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


def _ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    if mask is not None:
        if mask.sum() < 0.05 * mask.size:
            return float("nan")
        a = a[mask]
        b = b[mask]
    a = a.astype(np.float64, copy=False).ravel()
    b = b.astype(np.float64, copy=False).ravel()
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    if den <= 0:
        return float("nan")
    return float(a @ b) / den


# --------------------------------------------------------------------------- #
# Input handling and downscaling
# --------------------------------------------------------------------------- #
def _validate(img: np.ndarray, name: str) -> np.ndarray:
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
    return 1 if img.ndim == 2 else img.shape[2]


def _to_gray(img: np.ndarray) -> np.ndarray:
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
    if g.shape == shape:
        return g
    out = np.full(shape, float(g.mean()), dtype=np.float32)
    out[: g.shape[0], : g.shape[1]] = g
    return out


# --------------------------------------------------------------------------- #
# Warping
# --------------------------------------------------------------------------- #
def _warp_gray(img: np.ndarray, m: np.ndarray, shape: tuple[int, int], cval: float) -> np.ndarray:
    return _sk_warp(
        img, m, output_shape=shape, order=1, mode="constant", cval=cval, preserve_range=True
    ).astype(np.float32, copy=False)


def _valid_mask(m: np.ndarray, out_shape: tuple[int, int], src_shape: tuple[int, int]) -> np.ndarray:
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


# --------------------------------------------------------------------------- #
# FFT machinery
# --------------------------------------------------------------------------- #
@functools.lru_cache(maxsize=32)
def _hann2d(h: int, w: int) -> np.ndarray:
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


# Fourier-Mellin ---------------------------------------------------------------
_FM_SIZE = 128  # FFT side for rotation/scale (coarse: the refinement does the rest)
_FM_ANGLES = 180  # samples over [0, pi)  -> 1 deg / row
_FM_RADII = 96
_FM_RMIN, _FM_RMAX = 3.0, 0.45  # in FFT bins / fraction of N


@functools.lru_cache(maxsize=8)
def _logpolar_plan(n: int, n_ang: int, n_rad: int):
    """Bilinear sampling plan of an n x n image's rfft2 magnitude (rows
    fftshifted, so the array is n x (n//2+1) with DC at (n//2, 0)) on a
    log-polar grid covering angles [-pi/2, pi/2) -- a full period of the
    (point-symmetric) magnitude."""
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


# --------------------------------------------------------------------------- #
# Model fitting (weighted least squares on correspondences)
# --------------------------------------------------------------------------- #
def _fit_model(src: np.ndarray, dst: np.ndarray, wts: np.ndarray, model: str) -> np.ndarray | None:
    """Weighted LSQ fit of ``dst ~ M(src)``; ``None`` if degenerate."""
    n = len(src)
    if n < _MIN_SAMPLES[model] or wts.sum() <= 0:
        return None
    w = wts / wts.sum()
    cs = (w[:, None] * src).sum(axis=0)
    cd = (w[:, None] * dst).sum(axis=0)
    s = src - cs
    d = dst - cd
    sw = np.sqrt(w)[:, None]
    if model == "translation":
        core = np.eye(3)
    elif model == "similarity":
        # d = [[a, -b], [b, a]] s
        a_mat = np.concatenate(
            [np.stack([s[:, 0], -s[:, 1]], 1), np.stack([s[:, 1], s[:, 0]], 1)], axis=0
        )
        rhs = np.concatenate([d[:, 0], d[:, 1]])
        ww = np.concatenate([sw[:, 0], sw[:, 0]])
        sol, *_ = np.linalg.lstsq(a_mat * ww[:, None], rhs * ww, rcond=None)
        a, b = sol
        core = np.array([[a, -b, 0.0], [b, a, 0.0], [0.0, 0.0, 1.0]])
    elif model == "affine":
        sol, *_ = np.linalg.lstsq(s * sw, d * sw, rcond=None)  # (2, 2): d = s @ sol
        core = np.eye(3)
        core[:2, :2] = sol.T
    else:  # projective: weighted, normalised DLT
        scale_s = math.sqrt(2.0) / max(np.sqrt((w * (s**2).sum(1)).sum()), 1e-12)
        scale_d = math.sqrt(2.0) / max(np.sqrt((w * (d**2).sum(1)).sum()), 1e-12)
        ps, pd = s * scale_s, d * scale_d
        x, y = ps[:, 0], ps[:, 1]
        u, v = pd[:, 0], pd[:, 1]
        one, zero = np.ones(n), np.zeros(n)
        rows1 = np.stack([x, y, one, zero, zero, zero, -u * x, -u * y, -u], 1)
        rows2 = np.stack([zero, zero, zero, x, y, one, -v * x, -v * y, -v], 1)
        a_mat = np.concatenate([rows1 * sw, rows2 * sw], axis=0)
        try:
            _, _, vt = np.linalg.svd(a_mat)
        except np.linalg.LinAlgError:
            return None
        hn = vt[-1].reshape(3, 3)
        if abs(hn[2, 2]) < 1e-12:
            return None
        ns = np.diag([scale_s, scale_s, 1.0])
        nd_inv = np.diag([1.0 / scale_d, 1.0 / scale_d, 1.0])
        core = nd_inv @ hn @ ns
        core = core / core[2, 2]
    m = _translation(*cd) @ core @ _translation(*(-cs))
    if not np.all(np.isfinite(m)):
        return None
    return m


def _robust_fit(
    src: np.ndarray, dst: np.ndarray, wts: np.ndarray, model: str, min_count: int,
    cap: float = float("inf"),
) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Iteratively re-weighted fit with outlier rejection.

    The inlier threshold is ``3 * robust sigma`` of the residuals (at least
    0.35 px); the final inlier set is additionally limited to residuals
    ``<= cap``.  Returns (matrix, inlier mask, rms residual of inliers) or None.
    """
    inl = np.ones(len(src), bool)
    m = None
    for _it in range(6):
        if inl.sum() < min_count:
            return None
        m = _fit_model(src[inl], dst[inl], wts[inl], model)
        if m is None:
            return None
        res = np.linalg.norm(_apply(m, src) - dst, axis=1)
        sigma = 1.4826 * float(np.median(res[inl]))
        thr = max(0.35, 3.0 * sigma)
        new = res <= thr
        if np.array_equal(new, inl):
            break
        inl = new
    inl = inl & (res <= cap)
    if inl.sum() < min_count:
        return None
    m = _fit_model(src[inl], dst[inl], wts[inl], model)
    if m is None:
        return None
    res = np.linalg.norm(_apply(m, src[inl]) - dst[inl], axis=1)
    return m, inl, float(np.sqrt(np.mean(res**2)))


# --------------------------------------------------------------------------- #
# Patch refinement
# --------------------------------------------------------------------------- #
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
    ny = len(np.unique(tl[:, 0]))
    nx = len(tl) // ny
    y0, x0 = tl[0]
    block = img[y0 : y0 + ny * p, x0 : x0 + nx * p]
    return block.reshape(ny, p, nx, p).transpose(0, 2, 1, 3).reshape(ny * nx, p, p)


def _patch_size(h: int, w: int) -> int:
    side = min(h, w)
    for p in (64, 48, 40, 32, 24, 16):
        if side >= 5 * p and max(h, w) >= 8 * p:
            return p
    return max(8, side // 3)


_PATCH_MIN_PEAK = 0.08
_MAX_PATCH_RESIDUAL = 1.5  # work px; patches further off the fit are outliers
_PATCH_MIN_STD = 1e-3


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


# --------------------------------------------------------------------------- #
# Estimators (work resolution)
# --------------------------------------------------------------------------- #
@dataclass
class _Estimate:
    matrix: np.ndarray
    inliers: int = 0
    residual: float = float("nan")
    support: float = 0.0  # fraction of usable refinement patches that agree
    warped: tuple[np.ndarray, np.ndarray] | None = None  # (his warped, with matrix)


def _phase_estimate(cur: np.ndarray, his: np.ndarray, model: str) -> _Estimate | None:
    h, w = cur.shape
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    win = _hann2d(h, w)
    lowpass = _gauss_lowpass(h, w, 1.0)
    f_cur = _spectrum(cur, win)
    # Linear-part hypotheses: Fourier-Mellin, and "none" (rotations are small
    # in practice and FM is unreliable on weakly textured images); the one
    # whose translation phase correlation peaks higher wins.
    hyps = [np.eye(3)]
    if model != "translation":
        theta, scale = _fourier_mellin(cur, his)
        if abs(math.degrees(theta)) <= MAX_ROTATION_DEG and MIN_SCALE <= scale <= MAX_SCALE:
            ct, st = scale * math.cos(theta), scale * math.sin(theta)
            a = np.array([[ct, -st, 0.0], [st, ct, 0.0], [0.0, 0.0, 1.0]])
            hyps.append(_translation(*c) @ a @ _translation(*(-c)))
    best = None
    his_mean = float(his.mean())
    for m0 in hyps:
        hw = his if m0 is hyps[0] else _warp_gray(his, m0, (h, w), cval=his_mean)
        ty, tx, peak = _phase_corr(f_cur, _spectrum(hw, win), (h, w), lowpass)
        if best is None or float(peak) > best[0]:
            # peak at t: cur(p) ~ hw(p - t) = his(m0 (p - t))
            best = (float(peak), m0 @ _translation(-float(tx), -float(ty)))
    assert best is not None  # hyps is never empty
    m1 = best[1]
    ref = _refine(cur, his, m1, model)
    if ref is None:
        return _Estimate(m1, 0, float("nan"), 0.0)
    m2, n_inl, rms, n_usable, warped = ref
    return _Estimate(m2, 0, rms, n_inl / max(n_usable, 1), warped)


class _TranslationModel:
    """Minimal RANSAC model (skimage protocol) for a pure translation."""

    def __init__(self, t: np.ndarray):
        self.t = t

    @classmethod
    def from_estimate(cls, src, dst):
        return cls(np.mean(dst - src, axis=0))

    def residuals(self, src, dst):
        return np.linalg.norm(src + self.t - dst, axis=1)

    def __bool__(self) -> bool:
        return True

    @property
    def params(self) -> np.ndarray:
        return _translation(*self.t)


def _model_class(model: str):
    from skimage.transform import AffineTransform, ProjectiveTransform, SimilarityTransform

    return {
        "translation": _TranslationModel,
        "similarity": SimilarityTransform,
        "affine": AffineTransform,
        "projective": ProjectiveTransform,
    }[model]


def _normalise01(g: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(g, (0.5, 99.5))
    if hi <= lo:
        return np.zeros_like(g)
    return np.clip((g - lo) / (hi - lo), 0.0, 1.0)


def _features_estimate(
    cur: np.ndarray, his: np.ndarray, model: str, min_inliers: int, max_residual: float
) -> _Estimate | None:
    from skimage.feature import ORB, match_descriptors
    from skimage.measure import ransac

    kps, descs = [], []
    for img in (cur, his):
        orb = ORB(n_keypoints=400, n_scales=3, downscale=1.2, fast_threshold=0.05)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                orb.detect_and_extract(_normalise01(img).astype(np.float64))
        except (RuntimeError, ValueError, IndexError):
            return None
        if orb.descriptors is None or len(orb.descriptors) < max(min_inliers, 2):
            return None
        kps.append(orb.keypoints[:, ::-1].astype(np.float64))  # (row, col) -> (x, y)
        descs.append(orb.descriptors)
    matches = match_descriptors(descs[0], descs[1], cross_check=True, max_ratio=0.85)
    if len(matches) < max(min_inliers, _MIN_SAMPLES[model] + 1):
        return None
    src = kps[0][matches[:, 0]]
    dst = kps[1][matches[:, 1]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            mdl, inl = ransac(
                (src, dst),
                _model_class(model),
                min_samples=_MIN_SAMPLES[model],
                residual_threshold=max(1.0, 0.75 * max_residual),
                max_trials=300,
                stop_probability=0.999,
                rng=0,
            )
        except (ValueError, np.linalg.LinAlgError):
            return None
    if mdl is None or inl is None:
        return None
    n_inl = int(inl.sum())
    m = np.asarray(mdl.params, dtype=np.float64)
    if n_inl < min_inliers or not np.all(np.isfinite(m)):
        return None
    res = np.linalg.norm(_apply(m, src[inl]) - dst[inl], axis=1)
    rms = float(np.sqrt(np.mean(res**2)))
    if rms > max_residual:
        return None
    est = _Estimate(m, n_inl, rms, 1.0)
    ref = _refine(cur, his, m, model)
    if ref is not None:
        m2, n_patch, _, n_usable, warped = ref
        shift = float(np.max(np.linalg.norm(
            _apply(m2, kps[0][matches[inl, 0]]) - _apply(m, kps[0][matches[inl, 0]]), axis=1)))
        if n_patch >= 0.3 * n_usable and shift <= 2.0 * max_residual:
            res2 = np.linalg.norm(_apply(m2, src[inl]) - dst[inl], axis=1)
            est = _Estimate(m2, n_inl, float(np.sqrt(np.mean(res2**2))), 1.0, warped)
    return est


# --------------------------------------------------------------------------- #
# Public entry point
# --------------------------------------------------------------------------- #
_MIN_SUPPORT = 0.3  # fraction of usable refinement patches that must agree (phase)
_MAX_PHASE_RMS = 1.0  # RMS residual of the agreeing patches, work px (phase)


def register(
    cur: np.ndarray,
    his: np.ndarray,
    *,
    model: str = "similarity",
    work_size: int = 256,
    method: str = "auto",
    min_inliers: int = 12,
    max_residual_px: float = 2.0,
) -> Registration:
    """Estimate the transform mapping cur pixel coordinates to his coordinates.

    Parameters
    ----------
    cur, his:
        HxW or HxWxC images (uint8/integer/float/bool; channel counts must
        match).  They normally have the same shape; different shapes are
        supported (same downscale factor, common top-left origin).
    model:
        ``"translation"``, ``"similarity"`` (default), ``"affine"`` or
        ``"projective"``.
    work_size:
        longer side of the grayscale copies the estimation runs on (images
        smaller than this are used as they are).
    method:
        ``"auto"`` (default), ``"phase"`` or ``"features"`` (see module doc).
    min_inliers:
        minimum RANSAC inliers for a "features" estimate.
    max_residual_px:
        maximum RMS inlier residual of a "features" estimate, in work-resolution
        pixels (where the key points are measured); also scales the RANSAC
        inlier threshold.

    Returns
    -------
    Registration
        ``ok=False`` / ``method="identity"`` when no estimator produced a
        plausible, NCC-improving transform.
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if int(work_size) < 32:
        raise ValueError(f"work_size must be >= 32, got {work_size}")
    if int(min_inliers) < 1:
        raise ValueError(f"min_inliers must be >= 1, got {min_inliers}")
    if not (max_residual_px > 0):
        raise ValueError(f"max_residual_px must be > 0, got {max_residual_px}")
    cur = _validate(cur, "cur")
    his = _validate(his, "his")
    if _channels(cur) != _channels(his):
        raise ValueError(
            f"cur and his have different channel counts: {cur.shape} vs {his.shape}"
        )
    if min(cur.shape[:2] + his.shape[:2]) < _MIN_SIDE:
        raise ValueError(
            f"images too small to register (min side {_MIN_SIDE} px): {cur.shape} / {his.shape}"
        )

    # --- work-resolution grayscale copies -----------------------------------
    factor = min(1.0, float(work_size) / max(cur.shape[:2] + his.shape[:2]))
    gc, s_cur = _downscale(_to_gray(cur), factor)
    gh, s_his = _downscale(_to_gray(his), factor)
    shape = (max(gc.shape[0], gh.shape[0]), max(gc.shape[1], gh.shape[1]))
    same = gc.shape == gh.shape
    oh, ow = min(gc.shape[0], gh.shape[0]), min(gc.shape[1], gh.shape[1])
    ncc_before = _ncc(gc[:oh, :ow], gh[:oh, :ow])
    pc = gc if same else _pad_to(gc, shape)
    ph = gh if same else _pad_to(gh, shape)

    def finish(est: _Estimate | None, name: str) -> Registration | None:
        if est is None:
            return None
        mw = est.matrix / est.matrix[2, 2]
        if not _plausible(mw, gc.shape):
            return None
        valid = _valid_mask(mw, gc.shape, gh.shape)
        if same and est.warped is not None and _max_disp(est.warped[1], mw, gc.shape) < 0.1:
            hw = est.warped[0]  # refinement's last warp is (almost) the final one
        else:
            hw = _warp_gray(gh, mw, gc.shape, cval=0.0)
        ncc_after = _ncc(gc, hw, valid)
        if not (ncc_after >= MIN_NCC_AFTER):  # also rejects nan
            return None
        if not (ncc_after >= ncc_before - _NCC_TOLERANCE) and not math.isnan(ncc_before):
            return None
        if name == "phase" and (est.support < _MIN_SUPPORT or not est.residual <= _MAX_PHASE_RMS):
            return None
        m_native = np.linalg.inv(s_his) @ mw @ s_cur
        m_native /= m_native[2, 2]
        return Registration(
            matrix=m_native,
            method=name,
            ok=True,
            inliers=int(est.inliers) if name == "features" else 0,
            residual_px=float(est.residual) / factor if math.isfinite(est.residual) else float("nan"),
            ncc_before=ncc_before,
            ncc_after=ncc_after,
        )

    def run_phase() -> Registration | None:
        try:
            est = _phase_estimate(pc, ph, model)
        except _ESTIMATION_ERRORS:
            est = None
        return finish(est, "phase")

    def run_features() -> Registration | None:
        try:
            est = _features_estimate(gc, gh, model, int(min_inliers), float(max_residual_px))
        except _ESTIMATION_ERRORS:
            est = None
        return finish(est, "features")

    order = {"auto": (run_phase, run_features), "phase": (run_phase,),
             "features": (run_features, run_phase)}[method]
    for fn in order:
        reg = fn()
        if reg is not None:
            return reg
    return Registration(
        matrix=np.eye(3),
        method="identity",
        ok=False,
        inliers=0,
        residual_px=float("nan"),
        ncc_before=ncc_before,
        ncc_after=ncc_before,
    )
