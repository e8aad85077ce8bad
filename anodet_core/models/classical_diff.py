"""Classical change detection, the baseline users would pick instead of a network.

After the pipeline's registration (the same for every paired model), each image is standardised per channel
(zero mean, unit variance over the image: removes gain and offset between nights), the channel mean of
|cur - his| is smoothed with a Gaussian, and the map is ``sigmoid((d - offset) / softness)``: above 0.5
exactly where the smoothed normalised difference exceeds ``offset``. ``offset`` is the one fitted number,
chosen on validation pairs by :func:`fit_offset` (best pixel F1), so the baseline gets the same calibration
the networks get and runs through the same scoring path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import preset_config, register_model

__all__ = ["ClassicalDiffConfig", "ClassicalDiff", "classical_diff", "fit_offset"]


@dataclass(frozen=True)
class ClassicalDiffConfig:
    """``sigma``: Gaussian smoothing in model pixels; ``offset``: decision level; ``softness``: map slope."""

    sigma: float = 2.0
    offset: float = 1.0
    softness: float = 0.1


PRESETS = {"default": ClassicalDiffConfig()}


class ClassicalDiff(nn.Module):
    """(cur, his) normalised with mean = std = 0.5 -> change probability map (B, 1, H, W); no learned weights."""

    kernel: torch.Tensor  # buffers (register_buffer)
    offset: torch.Tensor

    def __init__(self, cfg: ClassicalDiffConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or ClassicalDiffConfig()
        radius = max(1, int(math.ceil(3 * cfg.sigma)))
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k = torch.exp(-(x**2) / (2 * cfg.sigma**2))
        self.register_buffer("kernel", (k / k.sum()).view(1, 1, 1, -1))
        # stored with the weights, so a calibrated baseline reloads as it was fitted
        self.register_buffer("offset", torch.tensor(float(cfg.offset)))

    def distance(self, cur: torch.Tensor, his: torch.Tensor) -> torch.Tensor:
        """Smoothed normalised difference (B, 1, H, W), the quantity ``offset`` thresholds."""
        def standardise(x: torch.Tensor) -> torch.Tensor:
            x = x.float()
            mean = x.mean(dim=(2, 3), keepdim=True)
            std = x.std(dim=(2, 3), keepdim=True).clamp_min(1e-3)
            return (x - mean) / std

        d = (standardise(cur) - standardise(his)).abs().mean(1, keepdim=True)
        k = self.kernel
        pad = k.shape[-1] // 2
        d = F.conv2d(F.pad(d, (pad, pad, 0, 0), mode="replicate"), k)
        return F.conv2d(F.pad(d, (0, 0, pad, pad), mode="replicate"), k.transpose(-1, -2))

    def forward_logits(self, cur: torch.Tensor, his: torch.Tensor) -> torch.Tensor:
        """(distance - fitted offset) / softness: the pre-sigmoid change map."""
        return (self.distance(cur, his) - self.offset) / self.cfg.softness

    def forward(self, cur: torch.Tensor, his: torch.Tensor) -> torch.Tensor:
        """Change probability map in [0, 1], (B, 1, H, W)."""
        return torch.sigmoid(self.forward_logits(cur, his))


@torch.inference_mode()
def fit_offset(model: ClassicalDiff, cur: np.ndarray, his: np.ndarray, mask: np.ndarray, batch_size: int = 32) -> float:
    """Set ``model.offset`` to the distance level with the best pixel F1 on (uint8 NHWC pairs, {0,1} masks)."""
    from ..evaluation.metrics import PixelMetrics
    from ..scoring.predictor import to_input

    dists = []
    for s in range(0, len(cur), batch_size):
        sl = slice(s, s + batch_size)
        dists.append(model.distance(to_input(cur[sl], "cpu", False), to_input(his[sl], "cpu", False))[:, 0].numpy())
    d = np.concatenate(dists)
    top = float(np.quantile(d, 0.9999)) or 1.0
    pm = PixelMetrics(threshold=0.5)
    pm.update(np.clip(d / top, 0, 1), mask)  # PixelMetrics bins scores in [0, 1]
    level, _ = pm.best_f1_threshold()
    model.offset.fill_(float(level) * top)
    return float(model.offset)


@register_model("classical_diff", presets=PRESETS)
def classical_diff(preset: str | None = None, **overrides: object) -> ClassicalDiff:
    """Registry factory: the classical baseline (``offset`` is refitted on validation, see :func:`fit_offset`)."""
    return ClassicalDiff(preset_config("ClassicalDiff", PRESETS, preset or "default", overrides))  # type: ignore[arg-type]
