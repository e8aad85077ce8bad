"""Scoring: image scores and pixel maps of a single-image model, in the model's OWN units.

CSA-Flow: mean z^2/2 (maps: channel-mean z^2); AnoViT: max of the smoothed squared reconstruction error (maps:
that error); PatchCore: the reweighted largest nearest-neighbour patch distance (maps: the smoothed distances);
PaDiM: the largest smoothed Mahalanobis distance (maps: those).  They are not probabilities and not in [0, 1].
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .archs import arch_of, to_input

__all__ = ["MAX_PIXELS", "score_images"]

MAX_PIXELS: int = 4_000_000
"""Pixel statistics (map calibration, pixel AUROC) use at most this many pixels (seeded uniform subsample above)."""


@torch.no_grad()
def score_images(
    model: Any, images: np.ndarray, device: str = "cpu", batch: int = 8, *, maps: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """(image scores float64 (N,), anomaly maps float32 (N, H, W) or None when ``maps=False``).

    ``images``: uint8 (N, H, W, 3) at the model's input size.  Scores and maps come from the model's
    ``score_and_map`` (one forward pass per batch), in the model's own units (not [0, 1], not probabilities).
    """
    arch_of(model)  # a registered single-image model, else ValueError
    model.eval()
    n = len(images)
    scores = np.empty(n, np.float64)
    out = np.empty((n, *images.shape[1:3]), np.float32) if maps else None
    for s in range(0, n, max(1, batch)):
        x = to_input(images[s : s + batch], model, device)
        sc, mp = model.score_and_map(x, maps=maps)
        scores[s : s + len(x)] = sc.double().cpu().numpy()
        if out is not None and mp is not None:  # mp is None only without maps
            out[s : s + len(x)] = mp[:, 0].float().cpu().numpy()
    return scores, out
