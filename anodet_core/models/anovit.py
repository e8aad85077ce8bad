"""AnoViT: ViT encoder + convolutional decoder, reconstruction-based anomaly detection.

Lee & Kang, "AnoViT: Unsupervised Anomaly Detection and Localization With Vision Transformer-
Based Encoder-Decoder", IEEE Access 2022.  Trained on normal images only with an MSE
reconstruction loss; at test time the model reconstructs what a normal image would look like,
so large reconstruction errors mark anomalies.

Encoder: a timm ViT (paper: ViT-B/16, ``vit_base_patch16_224``), weights from a local file
(``pretrained=<path>``) or random init -- nothing is downloaded.  The class token and any other
prefix tokens are dropped; the patch tokens become an (embed_dim, H/16, W/16) feature map.
Position embeddings are resampled for other input sizes (timm ``dynamic_img_size``).

Decoder: six ConvTranspose2d blocks, embed_dim->256 k3 s1, 256->128 k3 s1, 128->64 k3 s1,
64->32 k3 s2 p1, 32->16 k3 s2 p1, 16->3 k3 s2 p1, with InstanceNorm + ReLU between blocks (none
after the last: the target is the normalised image, not a [0, 1] one).  From a 14x14 grid this
gives 153x153, which is bilinearly resized to the input size.

Scores: ``anomaly_map`` = per-pixel squared error averaged over channels, Gaussian-smoothed
(sigma 4 by default, separable kernel truncated at 4 sigma, replicate padding) so single-pixel
reconstruction noise does not dominate; ``image_score`` = max of that map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import ModelInfo, ModelKind, preset_config, register_model
from .backbones import create_backbone

__all__ = [
    "MEAN",
    "STD",
    "AnoViTConfig",
    "PRESETS",
    "gaussian_blur",
    "AnoViT",
    "anovit",
]

MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
"""Input normalisation of timm's ViT-B/16 weights (x/255 - 0.5) / 0.5; also the recon target."""


@dataclass(frozen=True)
class AnoViTConfig:
    """Hyper-parameters.  ``embed_dim``/``depth``/``num_heads`` None = the timm model's own.

    ``pretrained``: False = random init, a path = local timm ViT weights (classifier dropped,
    position embeddings resampled to ``img_size`` by timm).
    """

    encoder: str = "vit_base_patch16_224"
    pretrained: bool | str = False
    img_size: int = 224
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    in_chans: int = 3
    decoder_widths: tuple[int, int, int, int, int] = (256, 128, 64, 32, 16)
    blur_sigma: float = 4.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "decoder_widths", tuple(self.decoder_widths))
        if len(self.decoder_widths) != 5:
            raise ValueError(f"decoder_widths needs 5 entries (6 blocks), got {self.decoder_widths}")
        if self.blur_sigma < 0:
            raise ValueError(f"blur_sigma must be >= 0, got {self.blur_sigma}")


PRESETS: dict[str, AnoViTConfig] = {
    # ViT-B/16 at 224 (86M encoder params), the paper's configuration.
    "paper": AnoViTConfig(),
    # ViT-Ti width (192, 3 heads), 4 layers, 128 px: for tests and CPU experiments.
    "lite": AnoViTConfig(encoder="vit_tiny_patch16_224", depth=4, img_size=128),
}


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian smoothing of (B, C, H, W), replicate padding; sigma <= 0 is a no-op."""
    if sigma <= 0:
        return x
    radius = max(1, int(truncate * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    kh = k.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    kv = k.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kh, groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kv, groups=c)


def _decoder(embed_dim: int, widths: tuple[int, ...], out_chans: int) -> nn.Sequential:
    chans = (embed_dim, *widths, out_chans)
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:])):
        if i < 3:
            layers.append(nn.ConvTranspose2d(cin, cout, 3, stride=1))
        else:
            layers.append(nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1))
        if i < len(chans) - 2:
            layers += [nn.InstanceNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class AnoViT(nn.Module):
    """(B, 3, H, W) normalised image -> reconstruction (B, 3, H, W); H, W multiples of the patch."""

    def __init__(self, cfg: AnoViTConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or AnoViTConfig()
        vit_kw: dict[str, Any] = {
            k: v for k, v in (("embed_dim", cfg.embed_dim), ("depth", cfg.depth), ("num_heads", cfg.num_heads)) if v is not None
        }
        self.encoder = create_backbone(
            cfg.encoder,
            pretrained=cfg.pretrained,
            features_only=False,
            num_classes=0,
            img_size=cfg.img_size,
            in_chans=cfg.in_chans,
            dynamic_img_size=True,
            **vit_kw,
        )
        self.embed_dim: int = self.encoder.embed_dim
        ps = self.encoder.patch_embed.patch_size
        self.patch_size: int = ps[0] if isinstance(ps, (tuple, list)) else int(ps)
        self.decoder = _decoder(self.embed_dim, cfg.decoder_widths, cfg.in_chans)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Patch-token feature map (B, embed_dim, H/p, W/p); prefix tokens dropped."""
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        if x.ndim != 4 or h * self.patch_size != x.shape[-2] or w * self.patch_size != x.shape[-1]:
            raise ValueError(f"expected (B, C, H, W) with H, W multiples of {self.patch_size}, got {tuple(x.shape)}")
        tokens = self.encoder.forward_features(x)[:, self.encoder.num_prefix_tokens :]
        return tokens.transpose(1, 2).reshape(x.shape[0], self.embed_dim, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction at the input size."""
        y = self.decoder(self.encode(x))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """MSE reconstruction loss (train on normal images only)."""
        return F.mse_loss(self(x), x)

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """Smoothed channel-mean squared error, (B, 1, H, W)."""
        err = (x - self(x)).pow(2).mean(dim=1, keepdim=True)
        return gaussian_blur(err, self.cfg.blur_sigma)

    def image_score(self, x: torch.Tensor) -> torch.Tensor:
        """Max of the anomaly map, (B,)."""
        return self.anomaly_map(x).amax(dim=(1, 2, 3))

    def score_and_map(self, x: torch.Tensor, maps: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(image scores (B,), maps (B, 1, H, W) or None) from one forward pass."""
        m = self.anomaly_map(x)
        return m.amax(dim=(1, 2, 3)), (m if maps else None)


@register_model("anovit", presets=PRESETS, info=ModelInfo(ModelKind.SINGLE_IMAGE, 224, MEAN, STD, "reconstruction", "img_size"))
def anovit(preset: str | None = None, **overrides: object) -> AnoViT:
    """Registry factory: ``PRESETS[preset or "paper"]`` with ``AnoViTConfig`` fields overridden."""
    return AnoViT(preset_config("AnoViT", PRESETS, preset, overrides))  # type: ignore[arg-type]
