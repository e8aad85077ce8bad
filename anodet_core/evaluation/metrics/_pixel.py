"""The streaming pixel-metrics accumulator: exact confusion counts plus per-class score histograms for AUC/EER."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._confusion import count_chunk, scores_from_counts
from ._hist import auc_from_hist, roc_curve_from_hist
from ._roc import eer_from_roc
from ._validation import CHUNK, check_threshold, score_mask_pair


class PixelMetrics:
    """Streaming pixel-level metrics over a whole split (micro averaging).

    Call :meth:`update` with batches of score maps and masks of any (matching)
    shape, then :meth:`compute`.  Confusion counts at ``score > threshold``
    are exact integers; ROC-AUC and EER come from ``bins``-bin per-class
    score histograms over [0, 1] (see the :mod:`anodet_core.evaluation.metrics` docstring
    for the resolution).  Accumulators can be combined with :meth:`merge`, e.g.
    when batches are processed by separate workers, and are picklable.
    """

    def __init__(self, threshold: float = 0.5, bins: int = 4096) -> None:
        self.threshold = check_threshold(threshold)
        if isinstance(bins, bool) or int(bins) != bins or bins < 2:
            raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
        self.bins = int(bins)
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.tp = self.fp = self.tn = self.fn = 0
        self.pos_hist = np.zeros(self.bins, dtype=np.int64)
        self.neg_hist = np.zeros(self.bins, dtype=np.int64)

    @property
    def n_pixels(self) -> int:
        """Number of pixels accumulated so far."""
        return self.tp + self.fp + self.tn + self.fn

    def update(self, scores: Any, masks: Any) -> None:
        """Add a batch: ``scores`` in [0, 1] and ``masks`` of the same shape (any shape)."""
        s, m = score_mask_pair(scores, masks)
        bins = self.bins
        for i in range(0, s.size, CHUNK):
            sc = s[i : i + CHUNK]
            mc = m[i : i + CHUNK]
            tp, fp, tn, fn = count_chunk(sc, mc, self.threshold)
            self.tp += tp
            self.fp += fp
            self.tn += tn
            self.fn += fn
            idx = (sc * bins).astype(np.intp)
            np.minimum(idx, bins - 1, out=idx)
            idx += mc.astype(np.intp) * bins  # positives go to the upper half
            h = np.bincount(idx, minlength=2 * bins)
            self.neg_hist += h[:bins]
            self.pos_hist += h[bins:]

    def merge(self, other: PixelMetrics) -> PixelMetrics:
        """Add another accumulator's counts into this one (same threshold and bins)."""
        if not isinstance(other, PixelMetrics):
            raise ValueError("can only merge another PixelMetrics")
        if other.bins != self.bins or other.threshold != self.threshold:
            raise ValueError("cannot merge PixelMetrics with different threshold or bins")
        self.tp += other.tp
        self.fp += other.fp
        self.tn += other.tn
        self.fn += other.fn
        self.pos_hist += other.pos_hist
        self.neg_hist += other.neg_hist
        return self

    def roc_curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Histogram ROC curve ``(fpr, tpr, thresholds)``, see :func:`roc_curve_from_hist`."""
        return roc_curve_from_hist(self.pos_hist, self.neg_hist)

    def best_f1_threshold(self) -> tuple[float, float]:
        """(threshold, F1) maximising F1 over the histogram's bin edges; (0.5, 0.0) without positives.

        The threshold sits half a bin below the chosen edge, so ``score > threshold`` keeps that bin: use it
        to calibrate an operating point on validation data (resolution 1/bins).
        """
        n_pos = int(self.pos_hist.sum())
        if n_pos == 0:
            return 0.5, 0.0
        tp = np.cumsum(self.pos_hist[::-1])[::-1].astype(np.float64)  # positives with bin >= b
        fp = np.cumsum(self.neg_hist[::-1])[::-1].astype(np.float64)
        f1 = 2 * tp / np.maximum(2 * tp + fp + (n_pos - tp), 1)
        b = int(np.argmax(f1))
        return max(0.0, (b - 0.5) / self.bins), float(f1[b])

    def auc_error_bound(self) -> float:
        """Upper bound on |histogram AUC - exact AUC| (pairs sharing a bin); NaN if one class."""
        n_pos = float(self.pos_hist.sum())
        n_neg = float(self.neg_hist.sum())
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        same = float(np.dot(self.pos_hist.astype(np.float64), self.neg_hist.astype(np.float64)))
        return 0.5 * same / (n_pos * n_neg)

    def compute(self) -> dict[str, float]:
        """Metrics over everything accumulated.

        Keys: ``tp, fp, tn, fn`` (Python ints), ``precision, recall, oa, f1,
        iou`` (see :func:`scores_from_counts` for 0/0 conventions), ``auc,
        eer`` (NaN when only one class is present).  ``ValueError`` if no
        pixel was accumulated.
        """
        if self.n_pixels == 0:
            raise ValueError("PixelMetrics.compute(): no pixels accumulated")
        out: dict[str, float] = {"tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn}
        out.update(scores_from_counts(self.tp, self.fp, self.tn, self.fn))
        if self.pos_hist.sum() == 0 or self.neg_hist.sum() == 0:
            out["auc"] = float("nan")
            out["eer"] = float("nan")
        else:
            out["auc"] = auc_from_hist(self.pos_hist, self.neg_hist)
            fpr, tpr, _ = self.roc_curve()
            out["eer"] = eer_from_roc(fpr, tpr)
        return out

    def __repr__(self) -> str:
        return (
            f"PixelMetrics(threshold={self.threshold}, bins={self.bins}, "
            f"n_pixels={self.n_pixels})"
        )
