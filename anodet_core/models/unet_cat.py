"""Unet-cat: a plain U-Net on the channel concatenation [cur, his] (AnoDFDNet paper, Table I).

Early-fusion baseline: the pair is stacked into one 6-channel image and a standard U-Net
(Ronneberger, Fischer, Brox, MICCAI 2015) predicts the per-pixel anomaly map.  Unlike the
Siamese models it has no built-in notion of "difference", so it is *not* symmetric in
(cur, his): swapping the inputs permutes the first conv's input channels.

Layout (the common modern U-Net, e.g. milesial/Pytorch-UNet with transposed-conv upsampling):
    stem    double conv  (3x3 conv, bias-free -> BN -> ReLU) x 2        in -> w1
    down_i  2x2 max-pool -> double conv                               w_i -> w_{i+1}, i = 1..4
    up_i    2x2 stride-2 ConvTranspose (bias) halving the channels,
            cat with the encoder skip, double conv                     -> w_{4-i+1}
    head    1x1 conv (bias) -> out_chans logits
Differences from the 2015 paper, all standard practice: "same" (padding=1) convs so the map
keeps the input size (no cropping of skips, no overlap-tile), and BatchNorm in every conv
block.  Weights keep PyTorch's default init (as the reference implementations do).

Parameter counts (in_chans=3 per image, i.e. 6 input channels, out_chans=1):
    paper  widths (64, 128, 256, 512, 1024): 31,039,361  (48.3 G MACs per pair at 256^2)
    lite   widths (16, 32, 64, 128, 256):     1,943,009  ( 3.1 G MACs per pair at 256^2)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ._registry import preset_config, register_model

__all__ = ["INPUT_SIZE", "MEAN", "STD", "UNetCatConfig", "PRESETS", "UNetCat", "unet_cat"]

INPUT_SIZE: int = 256
MEAN: float = 0.5
STD: float = 0.5
"""Same input convention as AnoDFDNet: (x/255 - MEAN)/STD, i.e. values in [-1, 1]."""

_DOWNSAMPLE = 16  # four 2x2 max-pools


@dataclass(frozen=True)
class UNetCatConfig:
    """``in_chans`` is per image (the network sees ``2 * in_chans``); ``widths`` are the five
    encoder levels, full resolution first (the decoder mirrors them)."""

    in_chans: int = 3
    out_chans: int = 1
    widths: tuple[int, int, int, int, int] = (64, 128, 256, 512, 1024)

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(self.widths))
        if len(self.widths) != 5:
            raise ValueError(f"widths must have 5 entries (4 down / 4 up), got {self.widths}")
        if any(w % 2 for w in self.widths[1:]):
            raise ValueError(f"widths[1:] must be even (up-convs halve them), got {self.widths}")


PRESETS: dict[str, UNetCatConfig] = {
    # Standard U-Net, base width 64: 31,039,361 params.
    "paper": UNetCatConfig(),
    # Base width 16 (1/4 width, ~1/16 params and compute): 1,943,009 params.
    "lite": UNetCatConfig(widths=(16, 32, 64, 128, 256)),
}


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BN -> ReLU) x 2; convs bias-free since BN follows."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """Max-pool by 2, then a double convolution."""
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(cin, cout))


class Up(nn.Module):
    """2x up-conv halving the channels, concat with the skip, double conv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // 2, 2, 2)
        self.conv = DoubleConv(cin // 2 + cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Upsample ``x``, concatenate ``skip``, double convolution."""
        return self.conv(torch.cat((skip, self.up(x)), 1))


class UNetCat(nn.Module):
    """cur/his pair -> per-pixel anomaly probability map (B, out_chans, H, W).

    Inputs: (B, in_chans, H, W) each, normalised to [-1, 1]; H, W multiples of 16.
    """

    def __init__(self, cfg: UNetCatConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or UNetCatConfig()
        w = cfg.widths
        self.stem = DoubleConv(2 * cfg.in_chans, w[0])
        self.downs = nn.ModuleList(Down(w[i], w[i + 1]) for i in range(4))
        self.ups = nn.ModuleList(Up(w[i + 1], w[i]) for i in reversed(range(4)))
        self.head = nn.Conv2d(w[0], cfg.out_chans, 1)

    def forward_logits(self, cur: torch.Tensor, his: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid map; train with BCEWithLogits."""
        _check_pair(cur, his)
        x = self.stem(torch.cat((cur, his), 1))
        skips = [x]
        for down in self.downs:
            x = down(x)
            skips.append(x)
        skips.pop()  # the bottleneck itself
        for up in self.ups:
            x = up(x, skips.pop())
        return self.head(x)

    def forward(self, cur: torch.Tensor, his: torch.Tensor) -> torch.Tensor:
        """Anomaly probability map in [0, 1], (B, out_chans, H, W)."""
        return torch.sigmoid(self.forward_logits(cur, his))


def _check_pair(cur: torch.Tensor, his: torch.Tensor) -> None:
    if cur.shape != his.shape:
        raise ValueError(f"cur {tuple(cur.shape)} and his {tuple(his.shape)} differ in shape")
    if cur.ndim != 4 or cur.shape[-2] % _DOWNSAMPLE or cur.shape[-1] % _DOWNSAMPLE:
        raise ValueError(f"expected (B, C, H, W) with H, W multiples of {_DOWNSAMPLE}, got {tuple(cur.shape)}")


@register_model("unet_cat", presets=PRESETS)
def unet_cat(preset: str | None = None, **overrides: object) -> UNetCat:
    """Registry factory: ``PRESETS[preset or "paper"]`` with ``UNetCatConfig`` fields overridden."""
    return UNetCat(preset_config("Unet-cat", PRESETS, preset, overrides))  # type: ignore[arg-type]
