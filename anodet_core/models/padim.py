"""PaDiM: a Gaussian per patch position of normal features, Mahalanobis distance as the anomaly score.

Defard et al., "PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection and Localization",
ICPR 2021 (reference: anomalib's ``padim``). A reference baseline for the single-image models, on the same
frozen backbone as PatchCore and CSA-Flow.

- Features: frozen ImageNet EfficientNet-Lite0 (offline) levels at strides 4, 8 and 16 (24 + 40 + 112 = 176
  channels) on the stride-8 grid (the finer level averaged down, the coarser resized up: a 32x32 grid at 256 px;
  the paper's stride-4 grid would need 4x the covariance memory), of which a seeded random ``n_features``
  (paper: 100 of ResNet-18's 448) are kept.
- Fit: per grid position, the mean and the covariance (+ ``eps`` I) of the normal images' features; the inverse
  covariances are stored.
- Scores: per position, the Mahalanobis distance to that position's Gaussian; the map is that grid bilinearly
  resized to the input and Gaussian-smoothed (sigma 4); the image score is the map's maximum.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import ModelInfo, ModelKind, preset_config, register_model
from ._scoring import ScoreAndMap
from .anovit import gaussian_blur
from .backbones import IMAGENET_MEAN, IMAGENET_STD
from .patch_features import PatchFeatures

__all__ = ["PaDiMConfig", "PRESETS", "PaDiM", "padim"]

INPUT_SIZE = 256


@dataclass(frozen=True)
class PaDiMConfig:
    """``pretrained``: True = packaged ImageNet Lite0, a path = local timm weights, False = random (tests)."""

    backbone: str = "efficientnet_lite0"
    pretrained: bool | str = True
    strides: tuple[int, ...] = (4, 8, 16)
    grid_stride: int = 8
    input_size: int = INPUT_SIZE
    n_features: int = 100
    eps: float = 0.01
    blur_sigma: float = 4.0
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "strides", tuple(self.strides))
        if self.input_size % max(self.strides) or self.input_size % self.grid_stride:
            raise ValueError(f"input_size must be a multiple of {max(self.strides)} and {self.grid_stride}, "
                             f"got {self.input_size}")
        if self.n_features < 1 or self.eps <= 0:
            raise ValueError("n_features must be >= 1 and eps > 0")


PRESETS: dict[str, PaDiMConfig] = {"paper": PaDiMConfig(), "lite": PaDiMConfig()}


class PaDiM(ScoreAndMap, nn.Module):
    """Image (B, 3, H, W), ImageNet-normalised -> Mahalanobis distances per grid position."""

    keep: torch.Tensor  # buffers: the kept channels, per-position mean and inverse covariance, fitted yet
    mean: torch.Tensor
    inv_cov: torch.Tensor
    fitted: torch.Tensor

    def __init__(self, cfg: PaDiMConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or PaDiMConfig()
        self.features = PatchFeatures(cfg.backbone, cfg.pretrained, cfg.strides, aggregate=1, grid_stride=cfg.grid_stride)
        c = self.features.channels
        d = min(cfg.n_features, c)
        keep = torch.randperm(c, generator=torch.Generator().manual_seed(cfg.seed))[:d].sort().values
        self.register_buffer("keep", keep)
        g = cfg.input_size // cfg.grid_stride
        self.register_buffer("mean", torch.zeros(g * g, d))
        self.register_buffer("inv_cov", torch.zeros(g * g, d, d))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, positions, d) of the kept channels."""
        f = self.features(x)[:, self.keep]
        return f.flatten(2).transpose(1, 2)

    @torch.no_grad()
    def fit(self, batches: Iterable[torch.Tensor]) -> None:
        """Per-position mean and inverse covariance of the normal images' features (float64 sums, then float32)."""
        n, s1, s2 = 0, None, None
        for x in batches:
            e = self._embed(x).double()
            if e.shape[1] != self.mean.shape[0]:
                raise ValueError(f"PaDiM was built for {self.cfg.input_size} px input, got {tuple(x.shape[-2:])}")
            s1 = e.sum(0) if s1 is None else s1 + e.sum(0)
            outer = torch.einsum("bpi,bpj->pij", e, e)
            s2 = outer if s2 is None else s2 + outer
            n += len(e)
        if s1 is None or s2 is None or n < 2:
            raise ValueError("PaDiM needs at least 2 normal images to fit")
        mu = s1 / n
        cov = (s2 - n * torch.einsum("pi,pj->pij", mu, mu)) / (n - 1)
        cov = cov + self.cfg.eps * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        self.mean.copy_(mu.float())
        self.inv_cov.copy_(torch.linalg.inv(cov).float())
        self.fitted.fill_(True)

    @torch.no_grad()
    def score_and_map(self, x: torch.Tensor, maps: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(image scores (B,) = map maximum, maps (B, 1, H, W) or None): smoothed Mahalanobis distances."""
        if not bool(self.fitted):
            raise RuntimeError("PaDiM is not fitted: fit it on normal images first")
        delta = self._embed(x) - self.mean
        d2 = torch.einsum("bpi,pij,bpj->bp", delta, self.inv_cov, delta).clamp_min(0)
        g = x.shape[-2] // self.cfg.grid_stride
        m = F.interpolate(d2.sqrt().view(len(x), 1, g, -1), size=x.shape[-2:], mode="bilinear", align_corners=False)
        m = gaussian_blur(m, self.cfg.blur_sigma)
        return m.amax(dim=(1, 2, 3)), (m if maps else None)



    def extra_repr(self) -> str:
        return f"grid {self.mean.shape[0]} positions, {self.mean.shape[1]} features"


@register_model("padim", presets=PRESETS,
                info=ModelInfo(ModelKind.SINGLE_IMAGE, INPUT_SIZE, IMAGENET_MEAN, IMAGENET_STD, "distance", "input_size"))
def padim(preset: str | None = None, **overrides: object) -> PaDiM:
    """Registry factory: ``PRESETS[preset or "paper"]`` with ``PaDiMConfig`` fields overridden."""
    return PaDiM(preset_config("PaDiM", PRESETS, preset, overrides))  # type: ignore[arg-type]
