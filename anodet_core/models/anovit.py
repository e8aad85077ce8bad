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

Hybrid stem (``stem="lite"``, no ViT weights needed): the ViT runs on frozen ImageNet Lite0 patch features (one
token per 16-px cell at 256 px) and reconstructs those features. ``lite`` preset (the honest AnoViT without
downloadable ViT weights): the features are standardised per channel (``normalise_features``), and the model is a
masked inpainter (``mask_block``): in training a checkerboard of token blocks at a random offset is replaced by a
learned mask token and the loss is the error on the masked tokens only; at test time four passes mask the four
phases of the checkerboard, so every token is predicted from its unmasked neighbours only and cannot be copied
through (a plain auto-encoder reconstructs anomalies too). Edge tokens see less context, so their normal error is
larger: with ``position_stats`` each token's error is a z-score against the training images' error at that token,
and with ``channel_stats`` (in ``lite``) each channel's residual is standardised there instead, a diagonal Gaussian
of the residual per token (some channels are harder to predict than others, and not equally hard everywhere).

Scores: ``anomaly_map`` = per-pixel squared error averaged over channels, Gaussian-smoothed
(sigma 4 by default, separable kernel truncated at 4 sigma, replicate padding) so single-pixel
reconstruction noise does not dominate; ``image_score`` = max of that map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
    normalise_features: bool = False  # stem "lite": standardise each feature channel with the training images' stats
    mask_block: int = 0  # stem "lite", > 0: masked inpainting (see the module docstring) in blocks of this many tokens
    position_stats: bool = False  # stem "lite": each token's error as a z-score against the training images' there
    channel_stats: bool = False  # with position_stats: standardise each channel's residual at each token instead
    train_flips: bool = True  # train on the four flips (the training loop's augmentation); False: as captured
    lr: float = 1e-4  # Adam's learning rate (the paper names none; 1e-4 is the usual ViT auto-encoder setting)

    def __post_init__(self) -> None:
        object.__setattr__(self, "decoder_widths", tuple(self.decoder_widths))
        object.__setattr__(self, "feature_strides", tuple(self.feature_strides))
        if self.stem not in ("patch", "lite"):
            raise ValueError(f"stem must be 'patch' or 'lite', got {self.stem!r}")
        if self.stem == "lite" and self.pretrained:
            raise ValueError("stem 'lite' builds its ViT for feature tokens: ViT image weights (pretrained) do not fit it")
        if self.stem == "lite" and self.img_size % max(*self.feature_strides, self.feature_grid):
            raise ValueError(f"img_size must be a multiple of {max(*self.feature_strides, self.feature_grid)} with stem 'lite'")
        if self.channel_stats and not self.position_stats:
            raise ValueError("channel_stats refines position_stats: it needs position_stats=True")
        if self.stem != "lite" and (self.normalise_features or self.mask_block or self.position_stats):
            raise ValueError("normalise_features, mask_block and position_stats work on feature tokens: they need "
                             "stem 'lite'")
        if self.mask_block < 0:
            raise ValueError(f"mask_block must be >= 0, got {self.mask_block}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.feature_jitter < 0:
            raise ValueError(f"feature_jitter must be >= 0, got {self.feature_jitter}")
        if len(self.decoder_widths) != 5:
            raise ValueError(f"decoder_widths needs 5 entries (6 blocks), got {self.decoder_widths}")
        if self.blur_sigma < 0:
            raise ValueError(f"blur_sigma must be >= 0, got {self.blur_sigma}")


PRESETS: dict[str, AnoViTConfig] = {
    # ViT-B/16 at 224 (86M encoder params), the paper's configuration.
    "paper": AnoViTConfig(),
    # the default of `anodet train`: AnoViT without downloadable ViT weights, a ViT-Ti (4 layers) over frozen ImageNet
    # Lite0 patch features (stride 8 + 16, 16x16 tokens at 256 px) as a masked inpainter of the standardised
    # features, each channel's residual standardised against the training images' at that token (module docstring);
    # trained on the images as captured: its tokens know their position, and a capture is never upside down
    "lite": AnoViTConfig(encoder="vit_tiny_patch16_224", depth=4, img_size=256, stem="lite",
                         normalise_features=True, mask_block=1, position_stats=True, channel_stats=True,
                         train_flips=False, lr=1e-3),
    # ViT-Ti width (192, 3 heads), 4 layers, 128 px, on pixels: the paper's design small enough for tests and CPUs
    "pixel": AnoViTConfig(encoder="vit_tiny_patch16_224", depth=4, img_size=128),
    # the ViT-Ti on the Lite0 features as a plain denoising auto-encoder (jittered input, clean target, no masking)
    "hybrid": AnoViTConfig(encoder="vit_tiny_patch16_224", depth=4, img_size=256, stem="lite", feature_jitter=0.2),
}


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian smoothing of (B, C, H, W), replicate padding; sigma <= 0 is a no-op."""
    if sigma <= 0:
        return x
    radius = max(1, int(truncate * sigma + 0.5))
    # the kernel from Python numbers and every channel as its own image: a constant one-channel kernel, so that
    # exported graphs (anodet_core.export) see a fixed convolution rather than weights computed from the input
    w = [math.exp(-0.5 * (t / sigma) ** 2) for t in range(-radius, radius + 1)]
    k = torch.tensor([v / sum(w) for v in w], device=x.device, dtype=x.dtype)
    b, c, h, wd = x.shape
    y = x.reshape(b * c, 1, h, wd)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return y.reshape(b, c, h, wd)


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
    feature_stats: torch.Tensor  # stem "lite": (2, C) per-channel mean and std of normalise_features
    error_stats: torch.Tensor  # stem "lite": (2, 1 or C, h, w) per-token mean and std of the training error or
    # (channel_stats) of each channel's residual (position_stats)

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
            stats = torch.zeros(2, self.stem.channels)
            stats[1] = 1.0  # identity until fit_feature_stats
            self.register_buffer("feature_stats", stats)
            g = cfg.img_size // self.stem.stride
            err_stats = torch.zeros(2, self.stem.channels if cfg.channel_stats else 1, g, g)
            err_stats[1] = 1.0  # identity until fit_error_stats
            self.register_buffer("error_stats", err_stats)
            # what a masked token is replaced with (learned; starts at the standardised mean, 0)
            self.mask_token = nn.Parameter(torch.zeros(self.stem.channels))

    def train(self, mode: bool = True) -> AnoViT:
        """Set training mode; a frozen feature stem always stays in eval mode."""
        super().train(mode)
        if self.stem is not None:
            self.stem.eval()
        return self

    def stem_features(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen stem features of a model-normalised image, before any standardisation (stem "lite" only)."""
        if self.stem is None:
            raise ValueError("stem_features needs stem 'lite'")
        return self.stem(x * self.to_imagenet[0] + self.to_imagenet[1])

    @torch.no_grad()
    def fit_feature_stats(self, feats: Sequence[torch.Tensor]) -> None:
        """Per-channel mean and std of ``normalise_features`` from :meth:`stem_features` batches of training images."""
        f = torch.cat(list(feats)).double()
        self.feature_stats[0] = f.mean(dim=(0, 2, 3)).float()
        self.feature_stats[1] = f.std(dim=(0, 2, 3)).clamp_min(1e-6).float()

    @torch.no_grad()
    def fit_error_stats(self, targets: Sequence[torch.Tensor]) -> None:
        """Per-token mean and std of :meth:`token_error` (``channel_stats``: of each channel of
        :meth:`token_residual`) over batches of training :meth:`target` s (eval mode)."""
        of = self.token_residual if self.cfg.channel_stats else self.token_error
        e = torch.cat([of(t) for t in targets]).double()
        if e.shape[-2:] != self.error_stats.shape[-2:]:
            raise ValueError(f"targets on a {tuple(e.shape[-2:])} grid, the model's is {tuple(self.error_stats.shape[-2:])}")
        self.error_stats[0] = e.mean(0).float()
        self.error_stats[1] = e.std(0).clamp_min(1e-6).float() if len(e) > 1 else torch.ones_like(e[0]).float()

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """What the model reconstructs: the image (stem "patch") or its frozen stem features (stem "lite"),
        standardised with ``normalise_features``."""
        if self.stem is None:
            return x
        f = self.stem_features(x)
        if self.cfg.normalise_features:
            f = (f - self.feature_stats[0, :, None, None]) / self.feature_stats[1, :, None, None]
        return f

    def inference_masks(self, h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
        """(4, 1, h, w) bool: the checkerboard of ``mask_block``-token blocks at its four phases; together they
        mask every token exactly once, and a masked block's neighbours are all visible."""
        b = self.cfg.mask_block
        i = torch.arange(h, device=device)[:, None] // b % 2
        j = torch.arange(w, device=device)[None, :] // b % 2
        return torch.stack([(i == a) & (j == c) for a in (0, 1) for c in (0, 1)])[:, None]

    def training_mask(self, n: int, h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
        """(n, 1, h, w) bool: per image, one checkerboard phase at a random offset (the inference masks, shifted)."""
        b = self.cfg.mask_block
        oi, oj, phase = (torch.randint(0, k, (n, 1, 1, 1), device=device) for k in (2 * b, 2 * b, 4))
        i = (torch.arange(h, device=device).view(1, 1, h, 1) + oi) // b % 2
        j = (torch.arange(w, device=device).view(1, 1, 1, w) + oj) // b % 2
        return (i == phase // 2) & (j == phase % 2)

    def reconstruct(self, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction of a :meth:`target`; with stem "lite" in training mode, from a jittered copy of it;
        tokens where ``mask`` (broadcast to (B, 1, h, w)) is true are replaced by the mask token first."""
        if self.stem is None:
            return self(target)
        t = target
        if self.training and self.cfg.feature_jitter > 0:
            rms = target.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
            t = target + self.cfg.feature_jitter * rms * torch.randn_like(target)
        if mask is not None:
            t = torch.where(mask, self.mask_token.view(1, -1, 1, 1).to(t.dtype), t)
        tokens = self.encoder.forward_features(t)[:, self.encoder.num_prefix_tokens :]
        h, w = target.shape[-2:]
        return self.decoder(tokens.transpose(1, 2).reshape(target.shape[0], self.embed_dim, h, w))

    def feature_loss(self, target: torch.Tensor) -> torch.Tensor:
        """Training loss on stem targets: MSE of the reconstruction, on the masked tokens only with ``mask_block``."""
        if not self.cfg.mask_block:
            return F.mse_loss(self.reconstruct(target), target)
        h, w = target.shape[-2:]
        mask = self.training_mask(target.shape[0], h, w, device=target.device)
        err = (self.reconstruct(target, mask) - target).pow(2).mean(dim=1, keepdim=True)
        return (err * mask).sum() / mask.sum().clamp_min(1)

    def token_residual(self, target: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) target minus reconstruction; with ``mask_block``, each token's from the pass that masked it
        (four passes, :meth:`inference_masks`)."""
        if not self.cfg.mask_block:
            return target - self.reconstruct(target)
        res = torch.zeros_like(target)
        h, w = target.shape[-2:]
        for m in self.inference_masks(h, w, device=target.device):
            res = torch.where(m, target - self.reconstruct(target, m), res)
        return res

    def token_error(self, target: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w) channel-mean squared :meth:`token_residual` per token."""
        return self.token_residual(target).pow(2).mean(dim=1, keepdim=True)

    def standard_error(self, target: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w) the map's token error: :meth:`token_error`, with ``position_stats`` as a z-score against the
        training error at that token, with ``channel_stats`` the channel-mean square of each channel's residual
        standardised there (a diagonal Gaussian of the residual per token)."""
        if self.cfg.channel_stats:
            z = (self.token_residual(target) - self.error_stats[0]) / self.error_stats[1]
            return z.pow(2).mean(dim=1, keepdim=True)
        err = self.token_error(target)
        if self.cfg.position_stats:  # edge tokens see less context: their normal error is larger
            err = (err - self.error_stats[0]) / self.error_stats[1]
        return err

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
        if self.stem is not None:
            return self.feature_loss(self.target(x))
        return F.mse_loss(self(x), x)

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """Smoothed channel-mean squared error at the input size, (B, 1, H, W)."""
        if self.stem is None:
            err = (x - self(x)).pow(2).mean(dim=1, keepdim=True)
        else:
            err = self.standard_error(self.target(x))
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
