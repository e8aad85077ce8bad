"""Evaluating a paired model on a labelled folder dataset, at the captures' native resolution.

Dataset: ``DIR/<sample>/cur.*, his.*, mask.*`` (white = anomaly; a missing mask means a normal sample),
optionally split into ``DIR/train``, ``DIR/val``, ``DIR/test`` (the test split is evaluated when present).
Metric definitions are those of :mod:`anodet_core.metrics`: pixel confusion counts summed over every pixel
of the split at ``score > 0.5``; a sample is predicted anomalous when its map has a region above the
threshold (image AUROC uses the map maximum as the image score).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .imaging import read_mask
from .inference import Predictor, to_native
from .metrics import PixelMetrics, image_decision, image_metrics
from .preprocess import prepare_pair
from .training import LabelledPair, folder_pairs


def dataset_split(root: str, split: str | None = None) -> tuple[str, list[LabelledPair]]:
    """The folder to evaluate: ``split`` if given, else ``test/`` when present, else ``root`` itself."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset folder not found: {root}")
    if split:
        path = os.path.join(root, split)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"dataset has no {split!r} split: {path}")
    else:
        path = os.path.join(root, "test") if os.path.isdir(os.path.join(root, "test")) else root
    pairs = folder_pairs(path)
    if not pairs:
        raise ValueError(f"no pair folders (with cur.* and his.*) under {path}")
    return path, pairs


def evaluate_pairs(
    predictor: Predictor,
    pairs: list[LabelledPair],
    *,
    threshold: float = 0.5,
    registration: str = "auto",
    batch_size: int = 8,
    read=lambda p: open(p, "rb").read(),
) -> dict[str, Any]:
    """Pixel metrics (native resolution) and image metrics of one split."""
    pm = PixelMetrics(threshold=threshold)
    img_scores: list[float] = []
    img_labels: list[bool] = []
    img_decisions: list[bool] = []
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s : s + batch_size]
        preps = [prepare_pair(read(p.cur_uri), read(p.his_uri), registration=registration) for p in chunk]
        maps = predictor.predict(np.stack([q.cur for q in preps]), np.stack([q.his for q in preps]))
        for p, q, m in zip(chunk, preps, maps):
            native = to_native(m, q.native_size)
            mask = read_mask(read(p.mask_uri), q.native_size) if p.mask_uri else np.zeros(native.shape, bool)
            pm.update(native, mask)
            img_scores.append(float(native.max()))
            img_labels.append(bool(mask.any()))
            img_decisions.append(image_decision(native, threshold))
    out: dict[str, Any] = pm.compute()
    im = image_metrics(img_scores, img_labels, img_decisions)
    out.update(image_auroc=im.image_auroc, image_recall=im.recall, false_alarms=im.false_alarms,
               n_samples=len(pairs), n_anomalous=im.n_anomalous)
    return out
