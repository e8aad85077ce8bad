"""CSA-Flow: cross-scale normalizing flow over attention-refined CNN features.

Single-image, unsupervised: trained by maximum likelihood on normal images only; a test image
is anomalous where its features are unlikely under the learnt density.  The flow is CS-Flow
(Rudolph et al., "Fully Convolutional Cross-Scale-Flows for Image-based Defect Detection",
WACV 2022; reference code github.com/marco-rudolph/cs-flow); CSA-Flow adds channel attention and
self-attention on the features.

Pipeline, per image x (ImageNet-normalised, H and W multiples of ``feature_reduction * 4``):

1. Frozen backbone features at 3 input scales (x, x/2, x/4; bilinear, antialiased).  The paper
   uses EfficientNet-B5 block 36 (304 ch, stride 32 at 768/384/512 px input).  The default here
   is the ImageNet EfficientNet-Lite0 (offline, see ``backbones``) level with stride 16
   (``blocks.4``, 112 ch, taken from ``feature_info``), so a cheap 256 px input still gives
   16x16 / 8x8 / 4x4 maps -- close to the paper's 12..24 px grids.
2. Channel attention (squeeze-excitation gate, C -> C/r -> C) then parameter-free
   self-attention over positions, Y = X + softmax(X X^T / sqrt(C)) X, per scale.  Both act on
   the FEATURES, before the flow: they are part of the feature extractor, so ``log_det`` and the
   likelihood are an exact density of the attended features (the flow's Jacobian never has to
   account for them).  Because the SE gate is trained through that likelihood, it could
   "improve" the NLL for free by shrinking the features (any density model rewards lower
   entropy input); the gates are therefore centred in log space (geometric mean 1 per image),
   so a constant gating is volume-preserving and that shortcut is closed.  The gate's last
   layer is zero-initialised: attention starts as identity gating.
3. Cross-scale flow: ``n_blocks`` coupling blocks, each preceded by a fixed seeded random
   channel permutation per scale.  A block splits channels in half (a | b) and does two affine
   couplings, a' = a * e(s2(b)) + t2(b), then b' = b * e(s1(a')) + t1(a'), where the
   subnetworks s1/s2 see all three scales at once (``CrossConvolutions``: conv per scale +
   upsampled coarser / strided finer neighbour contributions), kernel sizes 3, 3, 3, 5, hidden
   width 1024, LeakyReLU 0.1.  Log-scales are soft-clamped exactly as the reference:
   log e(s) = 0.636 * alpha * atan(s / alpha) with alpha = 3 (0.636 ~ 2/pi, so |log e| < alpha).
   Each subnetwork's output is multiplied by a per-scale gamma initialised to 0, so every block
   starts as the identity.  These building blocks live in :mod:`.cross_scale_flow` (re-exported
   here).

Training: ``loss(x)`` = mean over images of the per-image NLL 0.5 * ||z||^2 - log|det J|, each
summed over that image's dims only (so it does not depend on the batch size -- unlike ports that
sum the log-det over the batch), divided by the number of dims D when ``normalise_loss`` (the
reference's ``get_loss``; its gradient-clip norm of 1 and weight decay were tuned for that
scale).  Optimiser: ``make_optimizer`` (Adam, lr 2e-4, wd 1e-5, betas (0.5, 0.9), eps 1e-4),
``train_step`` clips the gradient norm to 1.

Scores: ``image_score`` = mean of z^2 / 2 over all scales, positions and channels (reference
``train.py``); ``anomaly_map`` = channel mean of z^2 per scale, bilinearly upsampled to the input
size and averaged over scales.  ``image_score="max"`` takes the maximum of that map smoothed by
``blur_sigma`` instead (as AnoViT, PatchCore and PaDiM score), and returns the smoothed map.

``feature_strides`` (e.g. (8, 16)) replaces the single level by PatchCore's pyramid: each level 3x3
locally averaged, resized to the finest one's grid and concatenated, at each of the input scales.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import ModelInfo, ModelKind, preset_config, register_model
from ._scoring import ScoreAndMap
from .anovit import gaussian_blur
from .backbones import IMAGENET_MEAN, IMAGENET_STD, create_backbone
from .cross_scale_flow import CrossConvolutions, CrossScaleCoupling, CrossScaleFlow
from .patch_features import combine_levels

__all__ = [
    "INPUT_SIZE",
    "MEAN",
    "STD",
    "ADAM_LR",
    "ADAM_WEIGHT_DECAY",
    "ADAM_BETAS",
    "ADAM_EPS",
    "GRAD_CLIP_NORM",
    "CSAFlowConfig",
    "PRESETS",
    "ChannelAttention",
    "self_attention",
    "CrossConvolutions",
    "CrossScaleCoupling",
    "CrossScaleFlow",
    "CSAFlow",
    "make_optimizer",
    "train_step",
    "csaflow",
]

INPUT_SIZE: int = 256
"""Default input resolution (paper: 384 or 512); 256 keeps CPU training cheap."""
MEAN: tuple[float, float, float] = IMAGENET_MEAN
STD: tuple[float, float, float] = IMAGENET_STD
"""Input normalisation expected by the ImageNet backbone."""

ADAM_LR: float = 2e-4
ADAM_WEIGHT_DECAY: float = 1e-5
ADAM_BETAS: tuple[float, float] = (0.5, 0.9)
ADAM_EPS: float = 1e-4  # CS-Flow reference train.py
GRAD_CLIP_NORM: float = 1.0

@dataclass(frozen=True)
class CSAFlowConfig:
    """Hyper-parameters; defaults follow CS-Flow/CSA-Flow except the (CPU-friendly) backbone.

    ``pretrained``: True = packaged ImageNet Lite0 weights, a path = local timm weights file,
    False = random backbone (tests only: random features make a meaningless density).
    ``feature_reduction``: backbone level to use, by its stride in ``feature_info``.
    """

    backbone: str = "efficientnet_lite0"
    pretrained: bool | str = True
    feature_reduction: int = 16
    # several levels instead (PatchCore's pyramid): each 3x3 locally averaged, on the finest one's grid, concatenated
    feature_strides: tuple[int, ...] = ()
    input_size: int = INPUT_SIZE
    n_scales: int = 3
    channel_attention: bool = True
    se_reduction: int = 8
    self_attention: bool = True
    n_blocks: int = 4
    kernel_sizes: tuple[int, ...] = (3, 3, 3, 5)
    hidden_channels: int = 1024
    clamp: float = 3.0
    leaky_slope: float = 0.1
    perm_seed: int = 0
    normalise_loss: bool = True
    image_score: str = "mean"  # "mean": of z^2/2 over everything (CS-Flow's); "max": of the map smoothed by blur_sigma
    # standardise each scale's backbone features per channel with the training images' mean and std (set by
    # ``fit_feature_stats`` before training): the identity flow then starts as a diagonal Gaussian of them
    normalise_features: bool = False
    lr: float = ADAM_LR  # Adam learning rate of make_optimizer (the reference's 2e-4)
    blur_sigma: float = 4.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel_sizes", tuple(self.kernel_sizes))
        object.__setattr__(self, "feature_strides", tuple(sorted(self.feature_strides)))
        if len(self.kernel_sizes) != self.n_blocks:
            raise ValueError(f"need one kernel size per block: {self.kernel_sizes} vs n_blocks={self.n_blocks}")
        if any(k % 2 == 0 for k in self.kernel_sizes):
            raise ValueError(f"kernel sizes must be odd, got {self.kernel_sizes}")
        if self.n_scales < 1 or self.n_blocks < 1 or self.hidden_channels < 1:
            raise ValueError("n_scales, n_blocks and hidden_channels must be >= 1")
        if self.clamp <= 0:
            raise ValueError(f"clamp must be > 0, got {self.clamp}")
        if self.image_score not in ("mean", "max"):
            raise ValueError(f"image_score must be 'mean' or 'max', got {self.image_score!r}")
        if self.input_size % self.size_multiple:
            raise ValueError(f"input_size must be a multiple of {self.size_multiple}, got {self.input_size}")

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this so every scale's map halves exactly."""
        return max(self.feature_strides or (self.feature_reduction,)) * 2 ** (self.n_scales - 1)


PRESETS: dict[str, CSAFlowConfig] = {
    # CS-Flow flow (hidden 1024, kernels 3/3/3/5) on ImageNet Lite0 stride-16 features.
    "paper": CSAFlowConfig(),
    # Same graph, 16x narrower subnetworks: trains in minutes on 2 CPU cores; standardised features, a 5x learning
    # rate (40 epochs are a tenth of the reference's steps) and the max of the smoothed map as the image score
    # (each measured on the single-image benchmark: README, Models)
    "lite": CSAFlowConfig(hidden_channels=64, normalise_features=True, lr=1e-3, image_score="max"),
}


class ChannelAttention(nn.Module):
    """Squeeze-excitation gate with log-centred gates (geometric mean 1 per image).

    Centring keeps a constant gating volume-preserving, so training it through the flow's
    likelihood cannot shrink the features to buy NLL.  Zero-initialised output: gates start at 1.
    """

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, H, W) scaled per image and channel by gates in (0, 2), log-centred over the channels."""
        a = self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3)))))
        log_g = F.logsigmoid(a) + math.log(2.0)  # log(2 sigmoid(a)): gate in (0, 2), 1 at a=0
        log_g = log_g - log_g.mean(dim=1, keepdim=True)
        return x * log_g.exp()[:, :, None, None]


def self_attention(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free self-attention over positions with residual: X + softmax(X X^T / sqrt(C)) X."""
    b, c, h, w = x.shape
    t = x.flatten(2).transpose(1, 2)  # (B, N, C)
    attn = torch.softmax(t @ t.transpose(1, 2) / math.sqrt(c), dim=-1)
    return (t + attn @ t).transpose(1, 2).reshape(b, c, h, w)


class CSAFlow(ScoreAndMap, nn.Module):
    """Image (B, 3, H, W), ImageNet-normalised -> latent maps per scale and per-image log-det.

    H, W must be multiples of ``cfg.size_multiple`` (64 by default).  The backbone is frozen:
    no gradients, and it stays in eval mode whatever ``train()`` is called with.
    """

    feature_stats: torch.Tensor  # buffer (n_scales, 2, C): mean and std of normalise_features

    def __init__(self, cfg: CSAFlowConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or CSAFlowConfig()
        probe = create_backbone(cfg.backbone, pretrained=False, features_only=True)
        reductions = probe.feature_info.reduction()
        indices = []
        for stride in cfg.feature_strides or (cfg.feature_reduction,):
            matches = [i for i, r in enumerate(reductions) if r == stride]
            if not matches:
                raise ValueError(f"{cfg.backbone} has no feature level with stride {stride}: {reductions}")
            indices.append(matches[-1])
        self.feature_index = indices[-1]
        del probe
        self.backbone = create_backbone(cfg.backbone, pretrained=cfg.pretrained, features_only=True,
                                        out_indices=tuple(indices))
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        self.channels: int = sum(self.backbone.feature_info.channels())
        self.channel_attn = ChannelAttention(self.channels, cfg.se_reduction) if cfg.channel_attention else None
        self.flow = CrossScaleFlow(self.channels, cfg)
        # per scale, per channel: (mean, std) of the training features; identity until fit_feature_stats
        stats = torch.zeros(cfg.n_scales, 2, self.channels)
        stats[:, 1] = 1.0
        self.register_buffer("feature_stats", stats)

    def train(self, mode: bool = True) -> CSAFlow:
        """Set training mode on the trainable parts; the frozen backbone always stays in eval mode."""
        super().train(mode)
        self.backbone.eval()  # frozen: BN running stats must never update
        return self

    def _check_input(self, x: torch.Tensor) -> None:
        m = self.cfg.size_multiple
        if x.ndim != 4 or x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"expected (B, C, H, W) with H, W multiples of {m}, got {tuple(x.shape)}")

    def backbone_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Frozen backbone maps of x, x/2, x/4, ... (finest first); no autograd graph."""
        self._check_input(x)
        feats = []
        with torch.no_grad():
            for s in range(self.cfg.n_scales):
                xs = x
                if s:
                    size = (x.shape[-2] >> s, x.shape[-1] >> s)
                    xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
                levels = self.backbone(xs)
                # the pyramid (feature_strides): PatchCore's locally averaged levels on the finest grid
                feats.append(combine_levels(levels, levels[0].shape[-2:]) if len(levels) > 1 else levels[0])
        return feats

    @torch.no_grad()
    def fit_feature_stats(self, feats: Sequence[Sequence[torch.Tensor]]) -> None:
        """Set the per-scale, per-channel mean and std of ``normalise_features`` from the backbone features
        (:meth:`backbone_features`) of the training images, one list per batch."""
        for s in range(self.cfg.n_scales):
            f = torch.cat([b[s] for b in feats]).double()
            self.feature_stats[s, 0] = f.mean(dim=(0, 2, 3)).float()
            self.feature_stats[s, 1] = f.std(dim=(0, 2, 3)).clamp_min(1e-6).float()

    def attend(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Standardisation (``normalise_features``), channel attention then self-attention, per scale (the
        trainable part of the extractor)."""
        out = []
        for s, f in enumerate(feats):
            if self.cfg.normalise_features:
                f = (f - self.feature_stats[s, 0, :, None, None]) / self.feature_stats[s, 1, :, None, None]
            if self.channel_attn is not None:
                f = self.channel_attn(f)
            if self.cfg.self_attention:
                f = self_attention(f)
            out.append(f)
        return out

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Attended backbone features per scale (finest first): the flow's input space."""
        return self.attend(self.backbone_features(x))

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(z per scale, log|det J| per image (B,)) of the attended features of ``x``."""
        return self.flow(self.features(x))

    def inverse(self, zs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Attended features from latents (the flow's exact inverse)."""
        return self.flow.inverse(zs)

    @staticmethod
    def nll_from(zs: Sequence[torch.Tensor], log_det: torch.Tensor) -> torch.Tensor:
        """Per-image negative log-likelihood (nats, constant dropped): 0.5 ||z||^2 - log|det J|."""
        sq = sum(z.pow(2).flatten(1).sum(1) for z in zs)
        return 0.5 * sq - log_det

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image NLL, (B,)."""
        return self.nll_from(*self(x))

    def loss_from(self, zs: Sequence[torch.Tensor], log_det: torch.Tensor) -> torch.Tensor:
        """Mean over images of the per-image NLL (divided by the dims if ``normalise_loss``)."""
        nll = self.nll_from(zs, log_det)
        if self.cfg.normalise_loss:
            nll = nll / sum(z[0].numel() for z in zs)
        return nll.mean()

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Training loss of a batch of normal images (see ``loss_from``)."""
        return self.loss_from(*self(x))

    @staticmethod
    def score_from(zs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mean of z^2 / 2 over all scales, positions and channels, (B,)."""
        flat = torch.cat([z.flatten(1) for z in zs], dim=1)
        return 0.5 * flat.pow(2).mean(dim=1)

    @staticmethod
    def map_from(zs: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Channel mean of z^2 per scale, upsampled to ``size`` and averaged over scales."""
        maps = [
            F.interpolate(z.pow(2).mean(dim=1, keepdim=True), size=size, mode="bilinear", align_corners=False)
            for z in zs
        ]
        return torch.stack(maps).mean(dim=0)


    def score_and_map(self, x: torch.Tensor, maps: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(image scores (B,), maps (B, 1, H, W) or None) from one forward pass: with ``image_score="mean"`` the
        reference score and map; with ``"max"`` the map smoothed by ``blur_sigma`` and its maximum."""
        zs = self(x)[0]
        if self.cfg.image_score == "mean":
            return self.score_from(zs), (self.map_from(zs, (x.shape[-2], x.shape[-1])) if maps else None)
        m = gaussian_blur(self.map_from(zs, (x.shape[-2], x.shape[-1])), self.cfg.blur_sigma)
        return m.amax(dim=(1, 2, 3)), (m if maps else None)



def make_optimizer(model: nn.Module) -> torch.optim.Adam:
    """Adam over the trainable parameters with the CS-Flow/CSA-Flow settings, at the model config's ``lr``."""
    params = [p for p in model.parameters() if p.requires_grad]
    lr = getattr(getattr(model, "cfg", None), "lr", ADAM_LR)
    return torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=ADAM_WEIGHT_DECAY)


def train_step(model: CSAFlow, x: torch.Tensor, optimizer: torch.optim.Optimizer) -> float:
    """One NLL step with gradient-norm clipping at ``GRAD_CLIP_NORM``; returns the loss."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = model.loss(x)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], GRAD_CLIP_NORM)
    optimizer.step()
    return float(loss.detach())


@register_model("csaflow", presets=PRESETS, info=ModelInfo(ModelKind.SINGLE_IMAGE, INPUT_SIZE, MEAN, STD, "nll", "input_size"))
def csaflow(preset: str | None = None, **overrides: object) -> CSAFlow:
    """Registry factory: ``PRESETS[preset or "paper"]`` with ``CSAFlowConfig`` fields overridden."""
    return CSAFlow(preset_config("CSA-Flow", PRESETS, preset, overrides))  # type: ignore[arg-type]
