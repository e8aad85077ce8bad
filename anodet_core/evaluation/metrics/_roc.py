"""Exact, rank-based ROC curve, ROC-AUC and equal error rate on score arrays (they sort: image level or small samples)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata

from ._validation import finite_1d, labels_1d


def _scores_and_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Validated 1-d scores and bool labels of equal length, with the class counts."""
    s = finite_1d(scores, "scores")
    y = labels_1d(labels, "labels")
    if s.shape != y.shape:
        raise ValueError(f"length mismatch: {s.size} scores vs {y.size} labels")
    n_pos = int(np.count_nonzero(y))
    return s, y, n_pos, int(y.size) - n_pos


def roc_auc(scores: Any, labels: Any) -> float:
    """Exact ROC-AUC via ranks (Mann-Whitney U), ties counted as 1/2.

    ``scores``: any finite reals (rank based, so no [0, 1] requirement);
    ``labels``: bool, or numeric with positive = ``> 0.5``.  Returns NaN when
    only one class is present.
    """
    s, y, n_pos, n_neg = _scores_and_labels(scores, labels)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s, method="average")
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (float(n_pos) * float(n_neg))


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ROC curve ``(fpr, tpr, thresholds)``.

    One point per distinct score (predicted positive iff ``score >=
    threshold``), starting at (0, 0) with threshold ``+inf`` and ending at
    (1, 1).  Thresholds are decreasing.  ``ValueError`` if only one class is
    present.
    """
    s, y, n_pos, n_neg = _scores_and_labels(scores, labels)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC curve needs both classes present")
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    tps = np.cumsum(y_sorted, dtype=np.int64)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    thresholds = np.r_[np.inf, s_sorted[last]]
    return fpr, tpr, thresholds


def eer_from_roc(fpr: Any, tpr: Any) -> float:
    """Equal error rate on a piecewise-linear ROC curve.

    The curve points must be ordered with non-decreasing ``fpr`` and ``tpr``
    from (0, 0) to (1, 1).  Returns the FPR (= FNR = 1 - TPR) at the first
    crossing of ``fpr + tpr - 1 = 0``, linearly interpolated between the two
    enclosing points.  NaN if the input contains NaN.
    """
    f = np.asarray(fpr, dtype=np.float64)
    t = np.asarray(tpr, dtype=np.float64)
    if f.shape != t.shape or f.ndim != 1 or f.size < 2:
        raise ValueError("fpr and tpr must be 1-D arrays of the same length >= 2")
    if np.isnan(f).any() or np.isnan(t).any():
        return float("nan")
    g = f + t - 1.0  # = FPR - FNR; non-decreasing along the curve
    hit = np.flatnonzero(g >= 0.0)
    if hit.size == 0:  # curve never reaches FPR == FNR (not ending at (1, 1))
        raise ValueError("ROC curve does not cross FPR == FNR; must end at (1, 1)")
    j = int(hit[0])
    if j == 0 or g[j] == 0.0:
        return float(f[j])
    i = j - 1
    alpha = -g[i] / (g[j] - g[i])
    return float(f[i] + alpha * (f[j] - f[i]))


def eer(scores: Any, labels: Any) -> float:
    """Exact equal error rate from scores and labels (NaN if one class only)."""
    s, y, n_pos, n_neg = _scores_and_labels(scores, labels)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    fpr, tpr, _ = roc_curve(s, y)
    return eer_from_roc(fpr, tpr)
