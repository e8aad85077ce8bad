"""Image-level metrics: per-image score and decision from a map, and the split's AUROC, recall and false alarms."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ._roc import roc_auc
from ._validation import check_scores_array, check_threshold, finite_1d, labels_1d, to_numpy


def _map_2d(anomaly_map: Any) -> np.ndarray:
    """A validated 2-D score map; leading size-1 dimensions are dropped."""
    a = to_numpy(anomaly_map, "map")
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"map: expected a 2-D map (optionally with leading size-1 dims), got {a.shape}")
    return check_scores_array(a, "map")


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
    t = check_threshold(threshold)
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
    s = finite_1d(scores, "scores")
    y = labels_1d(labels, "labels")
    d = labels_1d(decisions, "decisions")
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
