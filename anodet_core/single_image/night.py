"""Nightly use: captures without history are scored by the single-image model of their region type.

The model of a region type is registered as ``<arch>-<region_id>`` (:func:`single_image_model_name`).  The night
scores a capture with :class:`SingleImageScorer`: :func:`~anodet_core.imaging.prepare.prepare_image` (reduced decode +
resize), one forward pass for the image score and the map, and :func:`normalise_map`:
``clip(map / (2 * normal_map_p999), 0, 1)`` so the held-out normal pixel p99.9 lands at 0.5 (:data:`MAP_THRESHOLD`,
where findings are cut).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .archs import check_arch, model_input_size
from .scoring import score_images

__all__ = ["MAP_THRESHOLD", "single_image_model_name", "map_scale", "normalise_map", "SingleImageScorer"]

MAP_THRESHOLD: float = 0.5
"""Findings threshold of a normalised map (:func:`normalise_map`): the held-out normal pixel p99.9 lands here."""


def single_image_model_name(arch: str, region_id: str) -> str:
    """Registry name of the single-image model of a region type: ``<arch>-<region_id>`` (e.g. ``csaflow-R01``)."""
    from ..store.names import check_name

    check_arch(arch)
    return check_name(f"{arch}-{check_name(str(region_id), 'region_id')}", "model name")


def map_scale(card: Any) -> float:
    """Raw map value that becomes 1.0 after normalisation: twice the card's held-out normal pixel p99.9.

    So the normal p99.9 level maps to 0.5 (:data:`MAP_THRESHOLD`): about 1 normal pixel in 1000 reaches the
    finding threshold, before the minimum finding area removes isolated ones.  A card without a positive,
    finite ``normal_map_p999`` (in ``card.extra``) is a ``ValueError``.
    """
    p = (getattr(card, "extra", None) or {}).get("normal_map_p999")
    try:
        p = float(p)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        p = float("nan")
    if not (math.isfinite(p) and p > 0):
        raise ValueError(f"single-image model {getattr(card, 'name', '?')}:{getattr(card, 'version', '?')} has no "
                         "positive normal_map_p999 in its card; retrain it with fit_single_image")
    return 2.0 * p


def normalise_map(raw: np.ndarray, scale: float) -> np.ndarray:
    """Map in model units -> float32 in [0, 1]: ``clip(raw / scale, 0, 1)`` (``scale`` from :func:`map_scale`)."""
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"map scale must be positive and finite, got {scale}")
    out = np.atleast_1d(np.asarray(raw, np.float32) / np.float32(scale))
    np.clip(np.nan_to_num(out, copy=False, nan=1.0, posinf=1.0), 0.0, 1.0, out=out)
    return out.reshape(np.shape(raw))


class SingleImageScorer:
    """A loaded single-image model for the night: input size, image-score threshold and map scale from its card.

    Scores in fp32 (the card's threshold and map statistics were calibrated that way), through
    :func:`score_images`, i.e. the same forward pass as the calibration.
    """

    def __init__(self, model: torch.nn.Module, card: Any, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.card = card
        self.device = device
        self.size = model_input_size(self.model)
        self.threshold = float(card.threshold)
        self.scale = map_scale(card)

    def image_scores(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) -> image scores float64 (N,) in model units, no maps (second opinions)."""
        return score_images(self.model, images, self.device, batch=max(1, len(images)), maps=False)[0]

    def score(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, S, S, 3) at the input size -> (image scores float64 (N,) in model units,
        normalised maps float32 (N, S, S) in [0, 1])."""
        scores, maps = score_images(self.model, images, self.device, batch=max(1, len(images)))
        assert maps is not None
        return scores, normalise_map(maps, self.scale)
