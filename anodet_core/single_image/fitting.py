"""Fitting: a seeded train / held-out split of the normal images, training, and the threshold rule.

The image-score threshold is the 99th percentile (numpy linear interpolation) of the scores of the held-out 20 %
of normal images, so by construction about 1 % of normal images raise an alarm (with fewer than ~100 held-out
images this is close to their maximum).  The held-out normal score statistics (image scores: mean, std,
quantiles; pixel maps: mean, std, 99th / 99.9th percentiles) go to ``card.extra`` so later consumers (the night)
can normalise scores, e.g. ``(s - mean) / std`` or ``map / map_p999``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .archs import mean_std
from .scoring import MAX_PIXELS, score_images
from .training import train_single_image

__all__ = ["THRESHOLD_QUANTILE", "VAL_FRAC", "SCORE_UNITS", "calibrate", "calibrate_with_anomalies", "SingleImageFit",
           "fit_single_image"]

THRESHOLD_QUANTILE: float = 0.99
"""Image-score threshold = this quantile of the held-out normal images' scores."""
VAL_FRAC: float = 0.2
"""Share of the normal images held out (seeded) to calibrate the threshold."""
SCORE_UNITS: dict[str, str] = {  # what a card's scores mean, per architecture
    "csaflow": "CSA-Flow: mean z^2/2 (maps: channel-mean z^2)",
    "anovit": "AnoViT: max of the smoothed squared reconstruction error (maps: that error)",
    "patchcore": "PatchCore: reweighted max nearest-neighbour patch distance (maps: smoothed patch distances)",
    "padim": "PaDiM: max of the smoothed Mahalanobis distance map (maps: that map)",
}


def calibrate(scores: np.ndarray, maps: np.ndarray | None = None, quantile: float = THRESHOLD_QUANTILE) -> tuple[float, dict[str, Any]]:
    """(threshold, statistics) from the scores (and maps) of held-out NORMAL images.

    threshold = ``np.quantile(scores, quantile)`` (linear interpolation); statistics: image-score mean, std,
    min, max, median, p95, p99 and, with maps, pixel mean, std, p99 and p999 (for normalising maps later).
    """
    s = np.asarray(scores, np.float64)
    if s.size == 0 or not np.isfinite(s).all():
        raise ValueError("calibration needs at least one finite normal score")
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    thr = float(np.quantile(s, quantile))
    stats: dict[str, Any] = {
        "normal_score_mean": float(s.mean()), "normal_score_std": float(s.std()),
        "normal_score_min": float(s.min()), "normal_score_max": float(s.max()),
        "normal_score_median": float(np.median(s)), "normal_score_p95": float(np.quantile(s, 0.95)),
        "normal_score_p99": float(np.quantile(s, 0.99)), "n_calibration": int(s.size),
    }
    if maps is not None:
        m = np.asarray(maps, np.float64).ravel()
        if m.size > MAX_PIXELS:
            m = np.random.default_rng(0).choice(m, MAX_PIXELS, replace=False)
        stats.update({
            "normal_map_mean": float(m.mean()), "normal_map_std": float(m.std()),
            "normal_map_p99": float(np.quantile(m, 0.99)), "normal_map_p999": float(np.quantile(m, 0.999)),
        })
    return thr, stats


def calibrate_with_anomalies(normal_scores: np.ndarray, anomalous_scores: np.ndarray) -> tuple[float, dict[str, Any]]:
    """(threshold, figures) from held-out normal AND a few labelled anomalous images: the threshold that maximises
    recall - false-alarm rate (Youden's J) over the two, midway between the neighbouring scores; of equal J the
    highest (fewest false alarms). Figures: ``recall`` and ``false_alarm_rate`` there, ``n_anomalous``."""
    n = np.asarray(normal_scores, np.float64)
    a = np.asarray(anomalous_scores, np.float64)
    if not n.size or not a.size or not (np.isfinite(n).all() and np.isfinite(a).all()):
        raise ValueError("calibration with anomalies needs finite scores of both normal and anomalous images")
    values = np.unique(np.concatenate([n, a]))
    cands = np.concatenate([(values[:-1] + values[1:]) / 2, [values[-1]]])  # above each score but the last, and all
    recall = (a[None, :] > cands[:, None]).mean(1)
    far = (n[None, :] > cands[:, None]).mean(1)
    j = recall - far
    best = int(np.flatnonzero(j == j.max())[-1])
    thr = float(cands[best])
    return thr, {"recall": float(recall[best]), "false_alarm_rate": float(far[best]), "n_anomalous": int(a.size)}


@dataclass
class SingleImageFit:
    """Result of :func:`fit_single_image`: a trained, calibrated model ready for :func:`save_single_image_model`."""

    model: torch.nn.Module
    arch: str
    preset: str | None
    overrides: dict[str, Any]
    threshold: float
    history: list[dict[str, Any]]
    seconds: float
    n_train: int
    n_val: int
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str = ""


def _split(n: int, val_frac: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded (train, held-out) sorted index lists; ``round(n * val_frac)`` held out, clamped to [1, n - 1]."""
    if n < 2:
        raise ValueError(f"need at least 2 normal images (one is held out to calibrate the threshold), got {n}")
    k = min(n - 1, max(1, int(round(n * val_frac))))
    perm = np.random.default_rng(seed).permutation(n).tolist()
    return sorted(perm[k:]), sorted(perm[:k])


def fit_single_image(
    arch: str,
    normal: np.ndarray,
    *,
    preset: str | None = "lite",
    overrides: dict[str, Any] | None = None,
    epochs: int = 40,
    max_seconds: float = float("inf"),
    batch_size: int = 8,
    lr: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    val_frac: float = VAL_FRAC,
    quantile: float = THRESHOLD_QUANTILE,
    progress: bool = False,
    anomalous: np.ndarray | None = None,
) -> SingleImageFit:
    """Seeded (1 - val_frac) / val_frac split of the normal images, :func:`train_single_image` on the first
    part, threshold and normal-score statistics from the held-out part (:func:`calibrate`); with ``anomalous``
    (a few labelled anomalous images, never trained on) the threshold is :func:`calibrate_with_anomalies`' on
    those and the held-out normals instead. Either way ``metrics`` reports the recall (with anomalies) and the
    false-alarm rate at the threshold on the calibration images."""
    overrides = dict(overrides or {})
    normal = np.asarray(normal)
    tr, va = _split(len(normal), val_frac, seed)
    t0 = time.perf_counter()
    model, history = train_single_image(arch, normal[tr], preset=preset, overrides=overrides, epochs=epochs,
                                        max_seconds=max_seconds, batch_size=batch_size, lr=lr, seed=seed,
                                        device=device, progress=progress)
    seconds = time.perf_counter() - t0
    scores, maps = score_images(model, normal[va], device, batch_size)
    thr, stats = calibrate(scores, maps, quantile)
    rule = (f"quantile {quantile} (numpy linear) of the image scores of {len(va)} held-out normal "
            f"images (seeded {1 - val_frac:.0%}/{val_frac:.0%} split, seed {seed})")
    recall = float("nan")
    if anomalous is not None and len(anomalous):
        a_scores, _ = score_images(model, np.asarray(anomalous), device, batch_size, maps=False)
        thr, figs = calibrate_with_anomalies(scores, a_scores)
        recall = figs["recall"]
        rule = (f"max recall - false-alarm rate (Youden's J) over {len(va)} held-out normal and {len(a_scores)} "
                f"labelled anomalous images (seeded {1 - val_frac:.0%}/{val_frac:.0%} split of the normal, seed {seed})")
    fpr = float(np.mean(scores > thr))
    size = normal.shape[1]
    extra = {
        "kind": "single_image",
        "input_size": int(size),
        "mean": list(mean_std(model)[0]),
        "std": list(mean_std(model)[1]),
        "score_units": SCORE_UNITS[arch],
        "threshold_rule": rule,
        "threshold_quantile": quantile,
        **stats,
        "n_train": len(tr),
        "n_val": len(va),
        "epochs_run": len(history),
        "train_seconds": round(seconds, 3),
        "final_loss": history[-1]["loss"] if history else float("nan"),
        "seed": seed,
    }
    metrics = {"val_false_alarm_rate": fpr, "val_score_mean": stats["normal_score_mean"],
               "val_score_std": stats["normal_score_std"]}
    if anomalous is not None and len(anomalous):
        metrics["val_recall"] = recall
    fingerprint = hashlib.sha256(np.ascontiguousarray(normal).tobytes()).hexdigest()[:16]
    return SingleImageFit(model, arch, preset, overrides, thr, history, seconds, len(tr), len(va), metrics, extra,
                          fingerprint)
