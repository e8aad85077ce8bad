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
from ._confusion import confusion_counts, scores_from_counts
from ._hist import auc_from_hist, roc_curve_from_hist
from ._image import ImageMetrics, image_decision, image_metrics, image_score
from ._pixel import PixelMetrics
from ._roc import eer, eer_from_roc, roc_auc, roc_curve

__all__ = [
    "PixelMetrics",
    "ImageMetrics",
    "confusion_counts",
    "scores_from_counts",
    "roc_auc",
    "roc_curve",
    "roc_curve_from_hist",
    "auc_from_hist",
    "eer",
    "eer_from_roc",
    "image_decision",
    "image_score",
    "image_metrics",
]
