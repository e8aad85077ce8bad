"""Evaluation of a single-image model on normal vs anomalous images: image AUROC, recall, false alarms, pixel AUROC.

Pixel AUROC is the exact rank AUC (:func:`anodet_core.evaluation.metrics.roc_auc`, ties 1/2) over every pixel of the
anomalous images (labels from their masks) and of the normal images (all labelled normal); maps are in score
units, so the [0, 1]-histogram ``PixelMetrics`` is not used.  Above ``max_pixels`` a seeded uniform random
subsample of that many pixels is ranked instead (standard error of the AUC well below 1e-3 at that size).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .scoring import MAX_PIXELS, score_images

__all__ = ["evaluate_single_image"]


def _pixel_auroc(maps: np.ndarray, labels: np.ndarray, max_pixels: int, seed: int) -> float:
    """Exact rank AUC of ``maps`` against bool ``labels``, on a seeded subsample of ``max_pixels`` above that."""
    from ..evaluation.metrics import roc_auc

    s = maps.reshape(-1)
    y = labels.reshape(-1)
    if s.size > max_pixels:
        idx = np.random.default_rng(seed).choice(s.size, max_pixels, replace=False)
        s, y = s[idx], y[idx]
    return roc_auc(s, y)


def evaluate_single_image(
    model: torch.nn.Module,
    card: Any,
    normal: np.ndarray,
    anomalous: np.ndarray,
    masks: np.ndarray | None = None,
    *,
    device: str = "cpu",
    batch_size: int = 8,
    max_pixels: int = MAX_PIXELS,
    seed: int = 0,
) -> dict[str, Any]:
    """Image and pixel metrics of a single-image model on normal vs anomalous images (uint8 NHWC).

    * ``image_auroc``: exact rank AUC of the image scores (anomalous = positive); NaN with one class.
    * ``recall``: share of anomalous images with score > ``card.threshold``; ``false_alarms``: normal
      images above it (``false_alarm_rate`` = false_alarms / n_normal).
    * ``pixel_auroc``: with ``masks`` (bool (n_anomalous, H, W), the anomalous images' labels), exact rank
      AUC over all pixels of the anomalous and normal images (normal images: every pixel normal), on a
      seeded subsample of ``max_pixels`` pixels when there are more; NaN without masks or when the masks
      hold no anomalous pixel.
    """
    from ..evaluation.metrics import image_metrics

    normal = np.asarray(normal)
    anomalous = np.asarray(anomalous)
    if masks is not None and (len(masks) != len(anomalous) or masks.shape[1:] != anomalous.shape[1:3]):
        raise ValueError(f"masks {masks.shape} do not match the anomalous images {anomalous.shape}")
    want_maps = masks is not None
    s_norm, m_norm = score_images(model, normal, device, batch_size, maps=want_maps) if len(normal) else (np.empty(0), None)
    s_anom, m_anom = score_images(model, anomalous, device, batch_size, maps=want_maps) if len(anomalous) else (np.empty(0), None)
    thr = float(card.threshold)
    scores = np.concatenate([s_norm, s_anom])
    labels = np.r_[np.zeros(len(s_norm), bool), np.ones(len(s_anom), bool)]
    im = image_metrics(scores, labels, scores > thr)
    pixel = float("nan")
    if masks is not None and len(anomalous):  # masks is not None: want_maps
        maps = np.concatenate([m for m in (m_norm, m_anom) if m is not None])
        lab = np.concatenate([np.zeros((len(normal), *masks.shape[1:]), np.bool_), masks.astype(bool)])
        pixel = _pixel_auroc(maps, lab, max_pixels, seed)
    return {
        "image_auroc": im.image_auroc,
        "recall": im.recall,
        "pixel_auroc": pixel,
        "false_alarms": im.false_alarms,
        "false_alarm_rate": im.false_alarm_rate,
        "n_normal": im.n_normal,
        "n_anomalous": im.n_anomalous,
        "threshold": thr,
        "normal_scores": s_norm,
        "anomalous_scores": s_anom,
    }
