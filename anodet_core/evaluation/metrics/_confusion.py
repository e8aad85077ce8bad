"""Pixel confusion counts at a threshold and the scores derived from them (precision, recall, OA, F1, IoU)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._validation import CHUNK, check_threshold, score_mask_pair


def count_chunk(s: np.ndarray, m: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """``(tp, fp, tn, fn)`` of flat validated scores ``s`` against bool labels ``m`` at ``s > threshold``."""
    pred = s > threshold
    tp = int(np.count_nonzero(pred & m))
    npred = int(np.count_nonzero(pred))
    npos = int(np.count_nonzero(m))
    fp = npred - tp
    fn = npos - tp
    tn = int(s.size) - tp - fp - fn
    return tp, fp, tn, fn


def confusion_counts(scores: Any, masks: Any, threshold: float = 0.5) -> tuple[int, int, int, int]:
    """Exact pixel counts ``(tp, fp, tn, fn)`` over all elements of ``scores``/``masks``.

    Prediction is ``scores > threshold`` (strict), label is ``masks`` (bool) or
    ``masks > 0.5``.  Any shape, as long as both have the same shape.
    """
    t = check_threshold(threshold)
    s, m = score_mask_pair(scores, masks)
    tot = [0, 0, 0, 0]
    for i in range(0, s.size, CHUNK):
        c = count_chunk(s[i : i + CHUNK], m[i : i + CHUNK], t)
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
