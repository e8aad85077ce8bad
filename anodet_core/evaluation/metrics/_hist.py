"""ROC curve and ROC-AUC from per-class score histograms (equal bins over [0, 1]): memory independent of the data size."""

from __future__ import annotations

from typing import Any

import numpy as np


def _check_hists(pos_hist: Any, neg_hist: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both histograms as float64 arrays; ``ValueError`` unless 1-D, of one length and non-negative."""
    p = np.asarray(pos_hist)
    n = np.asarray(neg_hist)
    if p.ndim != 1 or p.shape != n.shape or p.size < 1:
        raise ValueError("pos_hist and neg_hist must be 1-D arrays of the same length")
    if (p < 0).any() or (n < 0).any():
        raise ValueError("histogram counts must be non-negative")
    return p.astype(np.float64), n.astype(np.float64)


def roc_curve_from_hist(pos_hist: Any, neg_hist: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr, thresholds)`` from per-class score histograms.

    ``pos_hist[b]`` / ``neg_hist[b]`` count anomalous / normal pixels whose
    score fell into bin ``b`` of ``len(pos_hist)`` equal bins over [0, 1].
    Point ``k`` (k = 0 .. bins) predicts positive every pixel in bins
    ``>= bins - k``; its threshold is that bin's lower edge (``+inf`` for the
    first point (0, 0)).  Thresholds are decreasing, fpr/tpr non-decreasing,
    ending at (1, 1).  ``ValueError`` if a class is empty.
    """
    p, n = _check_hists(pos_hist, neg_hist)
    n_pos, n_neg = p.sum(), n.sum()
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC curve needs both classes present")
    bins = p.size
    tpr = np.r_[0.0, np.cumsum(p[::-1]) / n_pos]
    fpr = np.r_[0.0, np.cumsum(n[::-1]) / n_neg]
    tpr[-1] = 1.0
    fpr[-1] = 1.0
    thresholds = np.r_[np.inf, np.arange(bins - 1, -1, -1, dtype=np.float64) / bins]
    return fpr, tpr, thresholds


def auc_from_hist(pos_hist: Any, neg_hist: Any) -> float:
    """ROC-AUC from per-class histograms (same-bin pairs count 1/2); NaN if a class is empty."""
    p, n = _check_hists(pos_hist, neg_hist)
    n_pos, n_neg = p.sum(), n.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg_below = np.cumsum(n) - n
    return float(np.sum(p * (neg_below + 0.5 * n)) / (n_pos * n_neg))
