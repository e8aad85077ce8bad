"""Frozen pretrained patch features shared by the memory-based single-image baselines (PatchCore, PaDiM).

A timm ``features_only`` backbone (default: the packaged ImageNet EfficientNet-Lite0, offline) gives the levels
named by their strides; each level is locally averaged (PatchCore's 3x3 neighbourhood aggregation, optional),
resized to one grid (the finest requested level's, or a coarser one) and concatenated along channels. The backbone is frozen and stays
in eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones import create_backbone

__all__ = ["PatchFeatures", "combine_levels"]


class PatchFeatures(nn.Module):
    """(B, 3, H, W) ImageNet-normalised -> (B, C, H / s, W / s), ``s`` = ``grid_stride`` or the finest of ``strides``."""

    def __init__(self, backbone: str, pretrained: bool | str, strides: Sequence[int], aggregate: int = 3,
                 grid_stride: int | None = None) -> None:
        super().__init__()
        probe = create_backbone(backbone, pretrained=False, features_only=True)
        reductions = probe.feature_info.reduction()
        idx = []
        for s in strides:
            hits = [i for i, r in enumerate(reductions) if r == s]
            if not hits:
                raise ValueError(f"{backbone} has no feature level with stride {s}: {reductions}")
            idx.append(hits[-1])
        del probe
        self.backbone = create_backbone(backbone, pretrained=pretrained, features_only=True, out_indices=tuple(idx))
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        self.channels = int(sum(self.backbone.feature_info.channels()))
        self.stride = grid_stride or min(strides)  # the output grid's
        self.aggregate = aggregate

    def train(self, mode: bool = True) -> PatchFeatures:
        """The backbone is frozen: it stays in eval mode (BN statistics never update)."""
        super().train(mode)
        self.backbone.eval()
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenated, locally averaged levels on the grid of ``self.stride``."""
        return combine_levels(self.backbone(x), (x.shape[-2] // self.stride, x.shape[-1] // self.stride),
                              self.aggregate)


def combine_levels(feats: Sequence[torch.Tensor], size: tuple[int, int], aggregate: int = 3) -> torch.Tensor:
    """Backbone levels, each ``aggregate`` x ``aggregate`` locally averaged, on one ``size`` grid (finer levels
    averaged down, coarser ones resized up), concatenated along channels."""
    out = []
    for f in feats:
        if aggregate > 1:
            f = F.avg_pool2d(f, aggregate, stride=1, padding=aggregate // 2, count_include_pad=False)
        if f.shape[-2] > size[0]:  # a finer level than the grid: average it down
            f = F.adaptive_avg_pool2d(f, size)
        elif f.shape[-2:] != size:
            f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        out.append(f)
    return torch.cat(out, dim=1)
