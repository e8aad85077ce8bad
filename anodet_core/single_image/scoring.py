"""Scoring: image scores and pixel maps of a single-image model, in the model's OWN units.

CSA-Flow: mean z^2/2 (maps: channel-mean z^2); AnoViT: max of the smoothed squared reconstruction error (maps:
that error).  They are not probabilities and not in [0, 1].
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

    ``images``: uint8 (N, H, W, 3) at the model's input size.  Scores are ``model.image_score`` and maps
    ``model.anomaly_map``, in the model's own units (not [0, 1], not probabilities); both come from one
    forward pass per batch.
    """
    arch = arch_of(model)
    model.eval()
    n = len(images)
    scores = np.empty(n, np.float64)
    out = np.empty((n, *images.shape[1:3]), np.float32) if maps else None
    for s in range(0, n, max(1, batch)):
        x = to_input(images[s : s + batch], model, device)
        if arch == "csaflow":
            zs, _ = model(x)
            sc = model.score_from(zs)
            mp = model.map_from(zs, (x.shape[-2], x.shape[-1])) if maps else None
        else:  # AnoViT: image_score is the max of anomaly_map
            mp = model.anomaly_map(x)
            sc = mp.amax(dim=(1, 2, 3))
        scores[s : s + len(x)] = sc.double().cpu().numpy()
        if out is not None and mp is not None:  # mp is None only without maps
            out[s : s + len(x)] = mp[:, 0].float().cpu().numpy()
    return scores, out
