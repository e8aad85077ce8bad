"""The public :func:`register`: validation, work-resolution copies, the estimators in order, and acceptance."""

from __future__ import annotations

import math

import numpy as np

from ._features import _features_estimate
from ._fit import MODELS
from ._geometry import _max_disp, _plausible
from ._image import _channels, _downscale, _pad_to, _to_gray, _validate
from ._phase import _phase_estimate
from ._types import Registration, _Estimate
from ._warp import _valid_mask, _warp_gray

METHODS = ("auto", "phase", "features")

# Acceptance of an estimate: NCC after alignment must be at least this and
# must not be worse than before alignment by more than _NCC_TOLERANCE.
MIN_NCC_AFTER = 0.2
_NCC_TOLERANCE = 0.01
_MIN_SUPPORT = 0.3  # fraction of usable refinement patches that must agree (phase)
_MAX_PHASE_RMS = 1.0  # RMS residual of the agreeing patches, work px (phase)

_MIN_SIDE = 16  # smallest image side register() accepts
# what a failing estimator may raise on a degenerate pair: treated as "no estimate", never propagated
_ESTIMATION_ERRORS = (ValueError, IndexError, RuntimeError, FloatingPointError, np.linalg.LinAlgError)


def _ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised cross-correlation of ``a`` and ``b`` (over ``mask``); ``nan`` if flat or the mask under 5 %."""
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
        ``"auto"`` (default), ``"phase"`` or ``"features"`` (see the
        :mod:`anodet_core.imaging.registration` package doc).
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
