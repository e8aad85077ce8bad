"""The "phase" estimator: Fourier-Mellin rotation/scale, phase-correlation translation, then patch refinement."""

from __future__ import annotations

import math

import numpy as np

from ._fourier_mellin import _fourier_mellin
from ._geometry import MAX_ROTATION_DEG, MAX_SCALE, MIN_SCALE, _translation
from ._phase_correlation import _gauss_lowpass, _hann2d, _phase_corr, _spectrum
from ._refine import _refine
from ._types import _Estimate
from ._warp import _warp_gray


def _phase_estimate(cur: np.ndarray, his: np.ndarray, model: str) -> _Estimate | None:
    """Phase-correlation estimate of cur -> his for same-shape work-resolution grayscale images."""
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
