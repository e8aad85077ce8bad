"""The "features" estimator: ORB key points, descriptor matching and RANSAC, then patch refinement."""

from __future__ import annotations

import warnings

import numpy as np

from ._fit import _MIN_SAMPLES
from ._geometry import _apply, _translation
from ._refine import _refine
from ._types import _Estimate


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
    """The RANSAC model class of ``model`` (skimage's transforms are imported on first use)."""
    from skimage.transform import AffineTransform, ProjectiveTransform, SimilarityTransform

    return {
        "translation": _TranslationModel,
        "similarity": SimilarityTransform,
        "affine": AffineTransform,
        "projective": ProjectiveTransform,
    }[model]


def _normalise01(g: np.ndarray) -> np.ndarray:
    """``g`` stretched to [0, 1] between its 0.5 and 99.5 percentiles (zeros if flat)."""
    lo, hi = np.percentile(g, (0.5, 99.5))
    if hi <= lo:
        return np.zeros_like(g)
    return np.clip((g - lo) / (hi - lo), 0.0, 1.0)


def _features_estimate(
    cur: np.ndarray, his: np.ndarray, model: str, min_inliers: int, max_residual: float
) -> _Estimate | None:
    """Key-point estimate of cur -> his on work-resolution grayscale images; ``None`` if too few good matches."""
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
