"""The transform models, and their (robust, weighted) least-squares fit to point correspondences."""

from __future__ import annotations

import math

import numpy as np

from ._geometry import _apply, _translation

MODELS = ("translation", "similarity", "affine", "projective")
_MIN_SAMPLES = {"translation": 1, "similarity": 2, "affine": 3, "projective": 4}


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
