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
from .backbones import IMAGENET_MEAN, IMAGENET_STD, create_backbone
from .patch_features import PatchFeatures

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
    stem: str = "patch"  # "patch": the ViT's own patch embedding on pixels; "lite": frozen ImageNet Lite0 features
    feature_strides: tuple[int, ...] = (8, 16)  # stem "lite": the levels ...
    feature_grid: int = 16  # ... on the grid of this stride (16: 16x16 tokens at 256 px, as the paper's ViT-B/16)
    feature_jitter: float = 0.0  # stem "lite": training noise on the encoder's input, relative to the features' RMS

    def __post_init__(self) -> None:
        object.__setattr__(self, "decoder_widths", tuple(self.decoder_widths))
        object.__setattr__(self, "feature_strides", tuple(self.feature_strides))
        if self.stem not in ("patch", "lite"):
            raise ValueError(f"stem must be 'patch' or 'lite', got {self.stem!r}")
        if self.stem == "lite" and self.pretrained:
            raise ValueError("stem 'lite' builds its ViT for feature tokens: ViT image weights (pretrained) do not fit it")
        if self.stem == "lite" and self.img_size % max(*self.feature_strides, self.feature_grid):
            raise ValueError(f"img_size must be a multiple of {max(*self.feature_strides, self.feature_grid)} with stem 'lite'")
        if self.feature_jitter < 0:
            raise ValueError(f"feature_jitter must be >= 0, got {self.feature_jitter}")
        if len(self.decoder_widths) != 5:
            raise ValueError(f"decoder_widths needs 5 entries (6 blocks), got {self.decoder_widths}")
        if self.blur_sigma < 0:
            raise ValueError(f"blur_sigma must be >= 0, got {self.blur_sigma}")


PRESETS: dict[str, AnoViTConfig] = {
    # ViT-B/16 at 224 (86M encoder params), the paper's configuration.
    "paper": AnoViTConfig(),
    # ViT-Ti width (192, 3 heads), 4 layers, 128 px: for tests and CPU experiments.
    "lite": AnoViTConfig(encoder="vit_tiny_patch16_224", depth=4, img_size=128),
    # the same ViT-Ti on frozen ImageNet Lite0 patch features (stride 8 + 16, 16x16 tokens at 256 px), reconstructing
    # those features (a denoising auto-encoder: jittered input, clean target): no ViT weights needed
    "hybrid": AnoViTConfig(encoder="vit_tiny_patch16_224", depth=4, img_size=256, stem="lite", feature_jitter=0.2),
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

    to_imagenet: torch.Tensor  # stem "lite": (scale, shift) from this input normalisation to ImageNet's

    def __init__(self, cfg: AnoViTConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or AnoViTConfig()
        vit_kw: dict[str, Any] = {
            k: v for k, v in (("embed_dim", cfg.embed_dim), ("depth", cfg.depth), ("num_heads", cfg.num_heads)) if v is not None
        }
        self.stem: PatchFeatures | None = None
        if cfg.stem == "lite":  # the ViT sees one token per feature-grid cell: a 1x1 patch embedding
            self.stem = PatchFeatures("efficientnet_lite0", True, cfg.feature_strides, aggregate=3,
                                      grid_stride=cfg.feature_grid)
            vit_kw.update(patch_size=1, img_size=cfg.img_size // self.stem.stride, in_chans=self.stem.channels)
        else:
            vit_kw.update(img_size=cfg.img_size, in_chans=cfg.in_chans)
        self.encoder = create_backbone(cfg.encoder, pretrained=cfg.pretrained, features_only=False, num_classes=0,
                                       dynamic_img_size=True, **vit_kw)
        self.embed_dim: int = self.encoder.embed_dim
        ps = self.encoder.patch_embed.patch_size
        self.patch_size: int = ps[0] if isinstance(ps, (tuple, list)) else int(ps)
        if self.stem is None:
            self.decoder = _decoder(self.embed_dim, cfg.decoder_widths, cfg.in_chans)
        else:  # back to the features, per token
            self.decoder = nn.Sequential(nn.Conv2d(self.embed_dim, 256, 1), nn.GELU(), nn.Conv2d(256, self.stem.channels, 1))
            # the stem wants ImageNet normalisation; the model's input is normalised with MEAN/STD
            shift = torch.tensor([(m - im) / s for m, im, s in zip(MEAN, IMAGENET_MEAN, IMAGENET_STD)])
            scale = torch.tensor([sd / s for sd, s in zip(STD, IMAGENET_STD)])
            self.register_buffer("to_imagenet", torch.stack([scale, shift]).view(2, 1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> AnoViT:
        """Set training mode; a frozen feature stem always stays in eval mode."""
        super().train(mode)
        if self.stem is not None:
            self.stem.eval()
        return self

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """What the model reconstructs: the image (stem "patch") or its frozen stem features (stem "lite")."""
        if self.stem is None:
            return x
        return self.stem(x * self.to_imagenet[0] + self.to_imagenet[1])

    def reconstruct(self, target: torch.Tensor) -> torch.Tensor:
        """Reconstruction of a :meth:`target`; with stem "lite" in training mode, from a jittered copy of it."""
        if self.stem is None:
            return self(target)
        t = target
        if self.training and self.cfg.feature_jitter > 0:
            rms = target.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
            t = target + self.cfg.feature_jitter * rms * torch.randn_like(target)
        tokens = self.encoder.forward_features(t)[:, self.encoder.num_prefix_tokens :]
        h, w = target.shape[-2:]
        return self.decoder(tokens.transpose(1, 2).reshape(target.shape[0], self.embed_dim, h, w))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Patch-token feature map (B, embed_dim, H/p, W/p); prefix tokens dropped."""
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        if x.ndim != 4 or h * self.patch_size != x.shape[-2] or w * self.patch_size != x.shape[-1]:
            raise ValueError(f"expected (B, C, H, W) with H, W multiples of {self.patch_size}, got {tuple(x.shape)}")
        tokens = self.encoder.forward_features(x)[:, self.encoder.num_prefix_tokens :]
        return tokens.transpose(1, 2).reshape(x.shape[0], self.embed_dim, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction: of the image at the input size (stem "patch"), of its stem features (stem "lite")."""
        if self.stem is not None:
            return self.reconstruct(self.target(x))
        y = self.decoder(self.encode(x))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """MSE reconstruction loss (train on normal images only)."""
        t = self.target(x)
        return F.mse_loss(self.reconstruct(t), t)

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """Smoothed channel-mean squared error at the input size, (B, 1, H, W)."""
        t = self.target(x)
        err = (t - self.reconstruct(t)).pow(2).mean(dim=1, keepdim=True)
        if err.shape[-2:] != x.shape[-2:]:
            err = F.interpolate(err, size=x.shape[-2:], mode="bilinear", align_corners=False)
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
