"""PatchCore: a memory bank of normal patch features, nearest-neighbour distance as the anomaly score.

Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022 (reference: anomalib's
``patchcore``). The reference baseline users pick first for single-image inspection, kept here to measure
CSA-Flow and AnoViT against it on the same backbone.

- Features: frozen ImageNet EfficientNet-Lite0 (offline) levels at strides 8 and 16, each 3x3 locally averaged,
  the coarser one resized to the stride-8 grid, concatenated (40 + 112 = 152 channels; the paper: WideResNet-50
  layers 2 and 3).
- Memory bank: greedy k-centre coreset (``coreset_ratio`` of all training patches, selected on a seeded random
  projection to ``projection_dim`` dimensions, as the paper) of the training images' patches.
- Scores: per patch, the Euclidean distance to its nearest memory patch; the map is that grid bilinearly resized
  to the input and Gaussian-smoothed (sigma 4); the image score is the largest patch distance reweighted by how
  isolated its nearest memory patch is (the paper's eq. 7 with ``num_neighbors`` support patches).

Not trained by gradient: :meth:`PatchCore.fit` builds the bank once from normal images; the bank is a buffer
saved with the weights, so a stored version scores exactly as fitted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import ModelInfo, ModelKind, preset_config, register_model
from ._scoring import ScoreAndMap
from .anovit import gaussian_blur
from .backbones import IMAGENET_MEAN, IMAGENET_STD
from .patch_features import PatchFeatures

__all__ = ["PatchCoreConfig", "PRESETS", "PatchCore", "greedy_coreset", "patchcore"]

INPUT_SIZE = 256
_CHUNK = 4096  # query patches per distance block (bounded memory)


@dataclass(frozen=True)
class PatchCoreConfig:
    """``pretrained``: True = packaged ImageNet Lite0, a path = local timm weights, False = random (tests)."""

    backbone: str = "efficientnet_lite0"
    pretrained: bool | str = True
    strides: tuple[int, ...] = (8, 16)
    input_size: int = INPUT_SIZE
    coreset_ratio: float = 0.1
    projection_dim: int = 128
    num_neighbors: int = 9
    blur_sigma: float = 4.0
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "strides", tuple(self.strides))
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        if self.input_size % max(self.strides):
            raise ValueError(f"input_size must be a multiple of {max(self.strides)}, got {self.input_size}")
        if self.num_neighbors < 1:
            raise ValueError(f"num_neighbors must be >= 1, got {self.num_neighbors}")


PRESETS: dict[str, PatchCoreConfig] = {"paper": PatchCoreConfig(), "lite": PatchCoreConfig()}


def greedy_coreset(feats: torch.Tensor, n: int, projection_dim: int, seed: int) -> torch.Tensor:
    """Indices of ``n`` rows of ``feats`` (N, C) chosen by greedy k-centre (farthest point first) on a seeded
    Gaussian random projection to ``projection_dim`` dims (none when C is not larger)."""
    g = torch.Generator().manual_seed(seed)
    z = feats.float()
    if projection_dim and z.shape[1] > projection_dim:
        proj = torch.randn(z.shape[1], projection_dim, generator=g) / math.sqrt(projection_dim)
        z = z @ proj.to(z.device)
    n = min(n, len(z))
    first = int(torch.randint(len(z), (1,), generator=g))
    chosen = torch.empty(n, dtype=torch.long)
    chosen[0] = first
    sq = z.pow(2).sum(1)

    def to(j: int) -> torch.Tensor:  # squared distances of every row to row j: one mat-vec, no (N, C) temporary
        return sq - 2 * (z @ z[j]) + sq[j]

    dist = to(first)
    for i in range(1, n):
        j = int(torch.argmax(dist))
        chosen[i] = j
        torch.minimum(dist, to(j), out=dist)
    return chosen


class PatchCore(ScoreAndMap, nn.Module):
    """Image (B, 3, H, W), ImageNet-normalised -> patch distances to the memory bank of normal patches."""

    memory: torch.Tensor  # buffer (M, C): the coreset of normal patch features

    def __init__(self, cfg: PatchCoreConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or PatchCoreConfig()
        self.features = PatchFeatures(cfg.backbone, cfg.pretrained, cfg.strides, aggregate=3)
        self.register_buffer("memory", torch.zeros(0, self.features.channels))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        key = prefix + "memory"
        if key in state_dict:  # the bank's size is the fitted one, not known before loading
            self.memory = torch.empty_like(state_dict[key], device=self.memory.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _patches(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        f = self.features(x)
        b, c, h, w = f.shape
        return f.permute(0, 2, 3, 1).reshape(b * h * w, c), (h, w)

    @torch.no_grad()
    def fit(self, batches: Iterable[torch.Tensor]) -> None:
        """Build the memory bank from batches of normal images (replacing any earlier bank)."""
        patches = torch.cat([self._patches(x)[0].cpu() for x in batches])
        if not len(patches):
            raise ValueError("PatchCore needs at least one normal image to fit")
        n = max(1, int(round(len(patches) * self.cfg.coreset_ratio)))
        idx = greedy_coreset(patches, n, self.cfg.projection_dim, self.cfg.seed) if n < len(patches) else torch.arange(n)
        self.memory = patches[idx].to(self.memory.device).contiguous()

    def _nearest(self, q: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances (N, k) and memory indices (N, k) of the ``k`` nearest memory patches of each row of ``q``."""
        if not len(self.memory):
            raise RuntimeError("PatchCore has no memory bank: fit it on normal images first")
        d, i = [], []
        for s in range(0, len(q), _CHUNK):
            dist = torch.cdist(q[s : s + _CHUNK], self.memory)
            dk, ik = dist.topk(min(k, len(self.memory)), dim=1, largest=False)
            d.append(dk)
            i.append(ik)
        return torch.cat(d), torch.cat(i)

    @torch.no_grad()
    def score_and_map(self, x: torch.Tensor, maps: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(image scores (B,), maps (B, 1, H, W) or None): reweighted max patch distance; smoothed distance map."""
        q, (h, w) = self._patches(x)
        b = x.shape[0]
        dist, idx = self._nearest(q)
        patch = dist[:, 0].view(b, h * w)
        worst = patch.argmax(dim=1)
        rows = torch.arange(b, device=q.device) * h * w + worst
        score = patch.gather(1, worst[:, None])[:, 0]
        k = self.cfg.num_neighbors
        if k > 1 and len(self.memory) > k:
            # eq. 7: weight the score by how isolated the nearest memory patch is among its own neighbours
            _, support = self._nearest(self.memory[idx[rows, 0]], k)
            d_support = torch.linalg.vector_norm(q[rows, None, :] - self.memory[support], dim=2)
            score = score * (1 - F.softmax(d_support, dim=1)[:, 0])
        if not maps:
            return score, None
        m = F.interpolate(patch.view(b, 1, h, w), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return score, gaussian_blur(m, self.cfg.blur_sigma)




@register_model("patchcore", presets=PRESETS,
                info=ModelInfo(ModelKind.SINGLE_IMAGE, INPUT_SIZE, IMAGENET_MEAN, IMAGENET_STD, "distance", "input_size"))
def patchcore(preset: str | None = None, **overrides: object) -> PatchCore:
    """Registry factory: ``PRESETS[preset or "paper"]`` with ``PatchCoreConfig`` fields overridden."""
    return PatchCore(preset_config("PatchCore", PRESETS, preset, overrides))  # type: ignore[arg-type]
