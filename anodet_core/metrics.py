"""Pixel- and image-level metrics for paired anomaly / change detection.

The definitions follow the AnoDFDNet paper and common change-detection
practice.  Everything here is NumPy-based; ``torch.Tensor`` inputs are
accepted wherever arrays are (they are detached and copied to the CPU).
Importing this module does not import torch.

Pixel-level metrics
-------------------
*Positive class* = anomaly / change.

* A pixel is **predicted positive** iff ``score > threshold`` (strict; the
  default threshold is 0.5, so a score of exactly 0.5 is predicted normal).
* A pixel is **labelled positive** iff the ground-truth mask is ``True``
  (boolean masks) or ``> 0.5`` (numeric masks, so 0/1 and 0/255 masks both
  work).
* TP, FP, TN, FN are **summed over every pixel of the split** (micro
  averaging).  Per-image scores are never averaged.  The counts are exact
  integers, also in the streaming :class:`PixelMetrics` accumulator.

From the counts::

    precision = TP / (TP + FP)
    recall    = TP / (TP + FN)
    OA        = (TP + TN) / (TP + FP + TN + FN)     # overall accuracy
    F1        = 2 * precision * recall / (precision + recall)
    IoU       = TP / (TP + FP + FN)                 # IoU of the anomaly class

0/0 conventions (see :func:`scores_from_counts`):

1. **Perfect normal split**: if ``TP + FP + FN == 0`` (no anomalous pixel in
   the ground truth *and* no pixel predicted anomalous) the prediction is
   perfect, and precision = recall = F1 = IoU = 1.0.
2. Otherwise every 0/0 is **0.0** (the scikit-learn ``zero_division=0``
   convention): precision is 0.0 when nothing is predicted positive but some
   anomalous pixels exist; recall is 0.0 when the ground truth has no
   anomalous pixel but something was predicted positive (false positives on a
   normal split are penalised with precision = recall = F1 = IoU = 0.0);
   F1 is 0.0 when precision + recall == 0.
3. A split with no pixels at all is an error (``ValueError``), not a score.

Threshold-free pixel metrics
----------------------------
* **ROC-AUC**: area under the ROC curve (TPR against FPR) over all pixels of
  the split; equal to the Mann-Whitney probability
  ``P(score_pos > score_neg) + 0.5 * P(score_pos == score_neg)``.
* **EER** (equal error rate): the error rate at the operating point where
  ``FPR == FNR`` with ``FNR = 1 - TPR``, found by linear interpolation on the
  piecewise-linear ROC curve (the first crossing of ``FPR + TPR - 1 = 0``).
  Perfect separation gives 0.0, identical scores 0.5, inverted scores 1.0.
* Both are **NaN** when only one class is present (no anomalous pixel, or no
  normal pixel) since the ROC curve is then undefined.

Exact versions working on score arrays are :func:`roc_auc` (ranks with
average ties), :func:`roc_curve` and :func:`eer`; they accept any finite real
scores (they are rank based).  They sort the data, so use them for
image-level scores or small samples.

The streaming :class:`PixelMetrics` accumulator instead keeps, per class, a
fixed-bin histogram of the scores: ``bins`` equal bins over [0, 1], bin
``b = min(floor(score * bins), bins - 1)`` (default 4096 bins, i.e. a width of
1/4096 ~ 2.4e-4).  Scores falling in the same bin are treated as ties, so the
histogram AUC differs from the exact AUC by at most
``0.5 * sum_b pos_b * neg_b / (P * N)`` (see
:meth:`PixelMetrics.auc_error_bound`); for maps whose scores are spread over
[0, 1] this is far below 1e-3 at 4096 bins.  The ROC curve of the histogram
(:func:`roc_curve_from_hist`) has one point per bin edge (threshold
``b / bins``, predicted positive iff ``score >= b / bins`` up to the binning)
and the EER is interpolated on that curve.  Memory is ``O(bins)``,
independent of the number or size of maps.

Image-level metrics
-------------------
* :func:`image_decision`: a capture is predicted anomalous iff its map has a
  connected region (8-connectivity in 2-D) of pixels with ``score >
  threshold`` whose area is at least ``min_area`` pixels (default 1, i.e. any
  pixel above the threshold).
* :func:`image_score`: the default per-image score, the map maximum.
* :func:`image_metrics`: image AUROC of the per-image scores (exact rank AUC,
  NaN if only one class is present), recall of the anomalous images at the
  given decisions (``detected anomalous / n_anomalous``, NaN when there is no
  anomalous image), and the count of false alarms (normal images decided
  anomalous).

Input validation
----------------
Score maps must have the same shape as their masks, be finite (no NaN) and
lie in [0, 1]; masks must not contain NaN.  Violations raise ``ValueError``
with a message saying what is wrong.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata

__all__ = [
    "PixelMetrics",
    "ImageMetrics",
    "confusion_counts",
    "scores_from_counts",
    "roc_auc",
    "roc_curve",
    "roc_curve_from_hist",
    "auc_from_hist",
    "auc_from_roc",
    "eer",
    "eer_from_roc",
    "image_decision",
    "image_score",
    "image_metrics",
]

# Elements processed at once inside update()/confusion_counts(), to bound the
# size of temporaries when a batch holds many full-resolution maps.
_CHUNK = 1 << 22


# --------------------------------------------------------------------------
# input helpers
# --------------------------------------------------------------------------
def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Convert an array-like or torch tensor to a NumPy array (no copy if possible)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        x = x.cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name}: cannot convert {type(x).__name__} to an array") from exc
    if arr.dtype == object:
        raise ValueError(f"{name}: expected a numeric array, got dtype object")
    return arr


def _check_scores_array(s: np.ndarray, name: str = "scores") -> np.ndarray:
    """Validate a score map: numeric, finite, within [0, 1]; returns a float array."""
    if s.dtype == np.bool_:
        s = s.astype(np.float32)
    elif not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise ValueError(f"{name}: expected a numeric array, got dtype {s.dtype}")
    elif not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    if s.size:
        lo, hi = s.min(), s.max()
        if np.isnan(lo) or np.isnan(hi):
            raise ValueError(f"{name}: contains NaN")
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{name}: values must lie in [0, 1], got range [{float(lo)}, {float(hi)}]"
            )
    return s


def _mask_to_bool(m: np.ndarray, name: str = "masks") -> np.ndarray:
    """Ground-truth mask to bool: True where anomalous (bool, or numeric > 0.5)."""
    if m.dtype == np.bool_:
        return m
    if np.issubdtype(m.dtype, np.floating):
        if m.size and np.isnan(m).any():
            raise ValueError(f"{name}: contains NaN")
        return m > 0.5
    if np.issubdtype(m.dtype, np.integer):
        return m > 0
    raise ValueError(f"{name}: expected a bool or numeric array, got dtype {m.dtype}")


def _labels_1d(labels: Any, name: str = "labels") -> np.ndarray:
    lab = _to_numpy(labels, name).reshape(-1)
    return _mask_to_bool(lab, name)


def _finite_1d(scores: Any, name: str = "scores") -> np.ndarray:
    s = _to_numpy(scores, name).reshape(-1)
    if s.dtype == np.bool_:
        s = s.astype(np.float64)
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise ValueError(f"{name}: expected numeric values, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    if not np.isfinite(s).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return s


def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not (0.0 <= t <= 1.0):  # also rejects NaN
        raise ValueError(f"threshold must lie in [0, 1], got {threshold!r}")
    return t


def _pair(scores: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    s = _to_numpy(scores, "scores")
    m = _to_numpy(masks, "masks")
    if s.shape != m.shape:
        raise ValueError(f"shape mismatch: scores {s.shape} vs masks {m.shape}")
    s = _check_scores_array(s, "scores")
    m = _mask_to_bool(m, "masks")
    return s.reshape(-1), m.reshape(-1)


def _count_chunk(s: np.ndarray, m: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    pred = s > threshold
    tp = int(np.count_nonzero(pred & m))
    npred = int(np.count_nonzero(pred))
    npos = int(np.count_nonzero(m))
    fp = npred - tp
    fn = npos - tp
    tn = int(s.size) - tp - fp - fn
    return tp, fp, tn, fn


# --------------------------------------------------------------------------
# confusion counts and derived scores
# --------------------------------------------------------------------------
def confusion_counts(scores: Any, masks: Any, threshold: float = 0.5) -> tuple[int, int, int, int]:
    """Exact pixel counts ``(tp, fp, tn, fn)`` over all elements of ``scores``/``masks``.

    Prediction is ``scores > threshold`` (strict), label is ``masks`` (bool) or
    ``masks > 0.5``.  Any shape, as long as both have the same shape.
    """
    t = _check_threshold(threshold)
    s, m = _pair(scores, masks)
    tot = [0, 0, 0, 0]
    for i in range(0, s.size, _CHUNK):
        c = _count_chunk(s[i : i + _CHUNK], m[i : i + _CHUNK], t)
        tot = [a + b for a, b in zip(tot, c)]
    return tot[0], tot[1], tot[2], tot[3]


def scores_from_counts(tp: int, fp: int, tn: int, fn: int) -> dict[str, float]:
    """Precision, recall, OA, F1 and anomaly IoU from confusion counts.

    Returns ``{"precision", "recall", "oa", "f1", "iou"}``.  0/0 conventions:
    if ``tp + fp + fn == 0`` (no anomaly in the labels and none predicted)
    precision = recall = F1 = IoU = 1.0; otherwise each 0/0 is 0.0.
    ``ValueError`` if a count is negative or all counts are zero.
    """
    counts = []
    for name, v in (("tp", tp), ("fp", fp), ("tn", tn), ("fn", fn)):
        fv = float(v)
        if not math.isfinite(fv) or fv < 0 or fv != int(fv):
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
        counts.append(int(fv))
    tp, fp, tn, fn = counts
    total = tp + fp + tn + fn
    if total == 0:
        raise ValueError("no pixels counted (tp + fp + tn + fn == 0)")
    oa = (tp + tn) / total
    if tp + fp + fn == 0:
        return {"precision": 1.0, "recall": 1.0, "oa": oa, "f1": 1.0, "iou": 1.0}
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2.0 * precision * recall / (precision + recall) if precision + recall else 0.0
    iou = tp / (tp + fp + fn)
    return {"precision": precision, "recall": recall, "oa": oa, "f1": f1, "iou": iou}


# --------------------------------------------------------------------------
# ROC / AUC / EER
# --------------------------------------------------------------------------
def _scores_and_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Validated 1-d scores and bool labels of equal length, with the class counts."""
    s = _finite_1d(scores, "scores")
    y = _labels_1d(labels, "labels")
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


def auc_from_roc(fpr: Any, tpr: Any) -> float:
    """Trapezoidal area under a ROC curve given as increasing ``fpr``/``tpr`` points."""
    f = np.asarray(fpr, dtype=np.float64)
    t = np.asarray(tpr, dtype=np.float64)
    if f.shape != t.shape or f.ndim != 1 or f.size < 2:
        raise ValueError("fpr and tpr must be 1-D arrays of the same length >= 2")
    return float(np.sum(np.diff(f) * (t[1:] + t[:-1]) / 2.0))


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


def _check_hists(pos_hist: Any, neg_hist: Any) -> tuple[np.ndarray, np.ndarray]:
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


# --------------------------------------------------------------------------
# streaming pixel accumulator
# --------------------------------------------------------------------------
class PixelMetrics:
    """Streaming pixel-level metrics over a whole split (micro averaging).

    Call :meth:`update` with batches of score maps and masks of any (matching)
    shape, then :meth:`compute`.  Confusion counts at ``score > threshold``
    are exact integers; ROC-AUC and EER come from ``bins``-bin per-class
    score histograms over [0, 1] (see the module docstring for the
    resolution).  Accumulators can be combined with :meth:`merge`, e.g. when
    batches are processed by separate workers, and are picklable.
    """

    def __init__(self, threshold: float = 0.5, bins: int = 4096) -> None:
        self.threshold = _check_threshold(threshold)
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
        return self.tp + self.fp + self.tn + self.fn

    def update(self, scores: Any, masks: Any) -> None:
        """Add a batch: ``scores`` in [0, 1] and ``masks`` of the same shape (any shape)."""
        s, m = _pair(scores, masks)
        bins = self.bins
        for i in range(0, s.size, _CHUNK):
            sc = s[i : i + _CHUNK]
            mc = m[i : i + _CHUNK]
            tp, fp, tn, fn = _count_chunk(sc, mc, self.threshold)
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


# --------------------------------------------------------------------------
# image level
# --------------------------------------------------------------------------
def _map_2d(anomaly_map: Any) -> np.ndarray:
    a = _to_numpy(anomaly_map, "map")
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"map: expected a 2-D map (optionally with leading size-1 dims), got {a.shape}")
    return _check_scores_array(a, "map")


def image_score(anomaly_map: Any) -> float:
    """Default per-image anomaly score: the maximum of the map (in [0, 1])."""
    a = _map_2d(anomaly_map)
    if a.size == 0:
        raise ValueError("map: empty")
    return float(a.max())


def image_decision(anomaly_map: Any, threshold: float = 0.5, min_area: int = 1) -> bool:
    """True iff the map has a connected region of ``score > threshold`` with ``>= min_area`` pixels.

    Regions are 8-connected (diagonal neighbours join).  ``map`` is 2-D;
    leading size-1 dimensions (e.g. ``(1, H, W)``) are dropped.
    """
    t = _check_threshold(threshold)
    if isinstance(min_area, bool) or int(min_area) != min_area or min_area < 1:
        raise ValueError(f"min_area must be an integer >= 1, got {min_area!r}")
    a = _map_2d(anomaly_map)
    above = a > t
    n_above = int(np.count_nonzero(above))
    if n_above < min_area:
        return False
    if min_area == 1:
        return True
    labels, n = ndimage.label(above, structure=np.ones((3, 3), dtype=bool))
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    return bool((areas >= min_area).any())


@dataclass
class ImageMetrics:
    """Image-level results: see :func:`image_metrics`."""

    image_auroc: float
    recall: float
    false_alarms: int
    n_normal: int
    n_anomalous: int

    @property
    def false_alarm_rate(self) -> float:
        """false_alarms / n_normal (NaN when there is no normal image)."""
        return self.false_alarms / self.n_normal if self.n_normal else float("nan")


def image_metrics(
    scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray, decisions: Sequence[bool] | np.ndarray
) -> ImageMetrics:
    """Image-level metrics of a split.

    ``scores``: per-image anomaly scores (any finite reals, e.g.
    :func:`image_score`); ``labels``: True for anomalous captures;
    ``decisions``: per-image predictions (e.g. :func:`image_decision`).

    * ``image_auroc``: exact rank ROC-AUC of ``scores`` (NaN if one class).
    * ``recall``: anomalous images decided anomalous / ``n_anomalous``
      (NaN if there is no anomalous image).
    * ``false_alarms``: normal images decided anomalous.
    """
    s = _finite_1d(scores, "scores")
    y = _labels_1d(labels, "labels")
    d = _labels_1d(decisions, "decisions")
    if not (s.size == y.size == d.size):
        raise ValueError(
            f"length mismatch: {s.size} scores, {y.size} labels, {d.size} decisions"
        )
    n_anom = int(np.count_nonzero(y))
    n_norm = int(y.size) - n_anom
    hits = int(np.count_nonzero(d & y))
    false_alarms = int(np.count_nonzero(d & ~y))
    return ImageMetrics(
        image_auroc=roc_auc(s, y),
        recall=hits / n_anom if n_anom else float("nan"),
        false_alarms=false_alarms,
        n_normal=n_norm,
        n_anomalous=n_anom,
    )
