"""AnoDFDNet: deep feature difference network for paired anomaly detection.

Wang et al., "AnoDFDNet: A Deep Feature Difference Network for Anomaly Detection",
J. Sensors 2022 (reference code: github.com/wangle53/AnoDFDNet).  A current capture (cur) and
a historical capture (his) of the same undercarriage spot go through one shared CNN encoder;
the absolute feature differences |F_c - F_h| at six scales feed a U-Net style decoder, and the
deepest difference is refined by a small ViT before decoding.  The output is a per-pixel
anomaly probability map.

Parameter count (paper preset, exactly 35,928,064 -- the figure in the paper):
    encoder     7,513,088  (bias-free convs + BN; e5 has neither BN nor bias)
    transformer 18,113,536 = 1x1 patch conv WITH bias 1,049,600 + pos-embed 262,144
                 + 2 x 8,399,872 per layer (2 LN 4,096; q/k/v/out Linears, all with bias,
                 4 x 1,049,600; MLP 4,197,376) + final LN 2,048
    decoder    10,301,440  (bias-free ConvTs/conv + BN; final d1 ConvT bias-free as well)
The count pins the ambiguous choices: dropping the attention out-projection would give
-2,099,200, bias-free q/k/v -6,144, a bias on d1 +1.  So the out-projection exists (even
though the reference discards its output), every Linear and the patch conv have a bias, and
d1 has none -- exactly as in the reference code.

Compute (paper preset, one cur/his pair at 256x256): 17.45e9 multiply-accumulates
(encoder 2 x 3.47e9, transformer 4.83e9 incl. attention matmuls and the out-projection,
decoder 5.67e9).  ``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per MAC and
reports 34.90e9, which *is* the paper's "34.9 GFLOPs": the paper's figure is 2 x MACs, not
34.9 G MACs (that would be 69.8e9 in FlopCounterMode).  Note FlopCounterMode does not know
PyTorch's CPU SDPA kernel; count under ``sdpa_kernel(SDPBackend.MATH)`` (or on CUDA) to
include the ~0.54e9 FLOPs of the attention matmuls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import ModelInfo, ModelKind, preset_config, register_model

__all__ = [
    "INPUT_SIZE",
    "MEAN",
    "STD",
    "AnoDFDNetConfig",
    "PRESETS",
    "AnoDFDNet",
    "anodfdnet",
    "decision_side_config",
]

INPUT_SIZE: int = 256
"""Training/inference resolution of the paper (and of the position-embedding grid)."""
MEAN: float = 0.5
STD: float = 0.5
"""Per-channel normalisation, (x/255 - MEAN)/STD == x/127.5 - 1 for uint8 input."""

_DOWNSAMPLE = 16  # e1..e4 each halve the resolution


@dataclass(frozen=True)
class AnoDFDNetConfig:
    """Hyper-parameters; defaults are the paper's (reference constants.py).

    ``widths`` are the e1/e_el, e2, e3, e4 channel counts (the decoder mirrors them);
    ``latent_dim`` is e5's output, ``token_dim`` the transformer width.
    """

    in_chans: int = 3
    out_chans: int = 1
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    latent_dim: int = 1024
    token_dim: int = 1024
    depth: int = 2
    num_heads: int = 16
    mlp_dim: int = 2048
    pos_drop: float = 0.2  # after adding the position embedding
    mlp_drop: float = 0.1  # after fc1+GELU and after fc2
    attn_drop: float = 0.0  # on attention probabilities (reference: 0)
    proj_drop: float = 0.0  # after the attention out-projection (reference: 0)
    attn_out_proj: bool = True
    ln_eps: float = 1e-6
    img_size: int = INPUT_SIZE  # size the position embedding is defined for
    final_bias: bool = False  # bias on d1 (reference: none; pinned by the param count)
    # --- beyond the paper (the ``base`` preset): a pretrained timm encoder and a pyramid decoder
    encoder: str = "dcgan"  # "dcgan": the paper's trunk; else a timm name (offline weights: efficientnet_lite0)
    pretrained: bool = True  # timm encoder: start from the packaged ImageNet weights
    out_indices: tuple[int, ...] = (0, 1, 2, 3)  # timm encoder stages used (deepest = Transformer input)
    freeze_stages: int = 0  # timm encoder: stem + this many stages take no gradient
    feature_norm: str = "none"  # "none" | "l2": unit-normalise features over channels before differencing
    pos_embed: bool = True  # False: no absolute position embedding (translation-equivariant, any crop size)
    pixel_skip: bool = False  # timm encoder: the full-resolution image difference as the decoder's last skip
    decoder_widths: tuple[int, ...] = (128, 96, 64, 32, 16)  # timm encoder: one per skip, plus the last
    # pyramid decoder: negative slope of the activation before the 1-channel head (0 = ReLU). With a ReLU the
    # net can say "anomalous" by switching every hidden unit off, which caps the logit at the head's bias: half
    # the anomalous pixels and the top captures then tie at one value. A small leak keeps them ordered.
    head_slope: float = 0.0
    # the map is sigmoid(logit / map_temperature): monotone, 0.5 at logit 0 whatever the temperature, so the
    # paper's 0.5 and every decision at it stay; calibration picks it so the stored uint8 map keeps the ranking
    map_temperature: float = 1.0
    # multi-scale inference (beyond the paper): the decision map is computed on the input resized by
    # ``decide_scale``; each of ``rank_scales`` adds a map that only orders what the decision map leaves below 0.5
    # (squashed under logit -RANK_MARGIN, so at 0.5 it makes no finding). A model fine-tuned at side S and fed 2S
    # with decide 0.5 / rank (1.0,) keeps its decisions and ranks faint, thin changes that only 2S resolves
    # above the nuisance of normal captures; training.candidate keeps it only when validation ranks better
    decide_scale: float = 1.0
    rank_scales: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.feature_norm not in ("none", "l2"):
            raise ValueError(f"feature_norm must be 'none' or 'l2', got {self.feature_norm!r}")
        object.__setattr__(self, "out_indices", tuple(self.out_indices))
        object.__setattr__(self, "decoder_widths", tuple(self.decoder_widths))
        if self.token_dim % self.num_heads:
            raise ValueError(f"token_dim {self.token_dim} not divisible by num_heads {self.num_heads}")
        if self.depth < 0:
            raise ValueError(f"depth must be >= 0, got {self.depth}")
        if not 0.0 <= self.head_slope < 1.0:
            raise ValueError(f"head_slope must be in [0, 1), got {self.head_slope}")
        if not self.map_temperature > 0.0:
            raise ValueError(f"map_temperature must be > 0, got {self.map_temperature}")
        if self.img_size % _DOWNSAMPLE:
            raise ValueError(f"img_size must be a multiple of {_DOWNSAMPLE}, got {self.img_size}")
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "rank_scales", tuple(float(x) for x in self.rank_scales))
        if any(not 0.0 < x <= 1.0 for x in (self.decide_scale, *self.rank_scales)):
            raise ValueError(f"decide_scale and rank_scales must be in (0, 1], got {self.decide_scale}, {self.rank_scales}")
        if self.pos_embed and self.multiscale:
            raise ValueError("multi-scale inference needs pos_embed=False (a position embedding ties the input size)")

    @property
    def multiscale(self) -> bool:
        """Whether the map comes from more than the one pass at the input size."""
        return self.decide_scale != 1.0 or bool(self.rank_scales)


# a rank scale's logits stay below -RANK_MARGIN: with a map temperature up to 6 the stored uint8 map keeps them at
# <= 126/255, under the 0.5 threshold after quantization too
RANK_MARGIN = 0.1


def decision_side_config(config: dict) -> dict:
    """A card's config as the model was trained: fed at its decision side (``img_size * decide_scale``), with no
    rank-only map; what a fine-tune starts from and what retraining trains at. Other configs come back as a copy."""
    out = dict(config)
    scale = float(out.pop("decide_scale", 1.0))
    out.pop("rank_scales", None)
    if scale != 1.0:
        out["img_size"] = int(round(out["img_size"] * scale))
    return out

PRESETS: dict[str, AnoDFDNetConfig] = {
    # 35,928,064 params, 34.9 GFLOPs (17.45 GMACs) per pair at 256^2.
    "paper": AnoDFDNetConfig(),
    # Same graph at 1/4 width so a training run fits in minutes on 2 CPU cores.
    "lite": AnoDFDNetConfig(
        widths=(16, 32, 64, 128), latent_dim=256, token_dim=256, num_heads=4, mlp_dim=512
    ),
    # Production default: ImageNet EfficientNet-Lite0 as the shared encoder (differences at strides 2, 4, 8,
    # 16), the Transformer on the 16x16 stride-16 difference, a pyramid decoder with a pixel-difference skip;
    # no absolute position embedding, so it trains on crops and runs on any size that is a multiple of 16.
    "base": AnoDFDNetConfig(
        encoder="efficientnet_lite0", latent_dim=112, token_dim=192, num_heads=6, mlp_dim=384, depth=2,
        pos_drop=0.1, pos_embed=False, pixel_skip=True, freeze_stages=1, head_slope=0.01,
    ),
}


def _down(cin: int, cout: int, k: int, s: int, act: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, 1, bias=False), nn.BatchNorm2d(cout), act)


def _up(cin: int, cout: int, k: int, s: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, k, s, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class Encoder(nn.Module):
    """Shared CNN (DCGAN-style discriminator trunk); returns the six feature maps."""

    def __init__(self, cfg: AnoDFDNetConfig) -> None:
        super().__init__()
        w1, w2, w3, w4 = cfg.widths
        self.e1 = _down(cfg.in_chans, w1, 4, 2, nn.ReLU(inplace=True))
        self.e_el = _down(w1, w1, 3, 1, nn.LeakyReLU(0.2, inplace=True))
        self.e2 = _down(w1, w2, 4, 2, nn.LeakyReLU(0.2, inplace=True))
        self.e3 = _down(w2, w3, 4, 2, nn.LeakyReLU(0.2, inplace=True))
        self.e4 = _down(w3, w4, 4, 2, nn.LeakyReLU(0.2, inplace=True))
        self.e5 = nn.Conv2d(w4, cfg.latent_dim, 3, 1, 1, bias=False)  # no BN/act: raw features

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of one image at every encoder level, shallow to deep (the levels differenced)."""
        e1 = self.e1(x)
        e_el = self.e_el(e1)
        e2 = self.e2(e_el)
        e3 = self.e3(e2)
        e4 = self.e4(e3)
        return [e1, e_el, e2, e3, e4, self.e5(e4)]


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v Linears (reference ViT layout).

    ``out_proj=False`` reproduces the reference, which computes ``out(context)`` and then
    returns ``context`` instead: the ``out`` Linear is kept (same parameters/state_dict) but
    its output would be discarded, so we skip computing it -- numerically identical.
    """

    def __init__(self, dim: int, num_heads: int, attn_drop: float, proj_drop: float, out_proj: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)
        self.out_proj = out_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention over tokens (B, N, D) -> (B, N, D)."""
        b, n, d = x.shape
        shape = (b, n, self.num_heads, d // self.num_heads)
        q, k, v = (lin(x).view(shape).transpose(1, 2) for lin in (self.query, self.key, self.value))
        # softmax(q k^T / sqrt(head_dim)) v, fused; same maths as the reference's explicit matmuls.
        ctx = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        ctx = ctx.transpose(1, 2).reshape(b, n, d)
        if not self.out_proj:
            return ctx
        return self.proj_drop(self.out(ctx))


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout; ViT init (Xavier weights, ~0 biases)."""

    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.normal_(fc.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Position-wise feed-forward (B, N, D) -> (B, N, D)."""
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-LN transformer layer."""

    def __init__(self, cfg: AnoDFDNetConfig) -> None:
        super().__init__()
        d = cfg.token_dim
        self.attention_norm = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.attn = Attention(d, cfg.num_heads, cfg.attn_drop, cfg.proj_drop, cfg.attn_out_proj)
        self.ffn_norm = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.ffn = Mlp(d, cfg.mlp_dim, cfg.mlp_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-LN block: x + attn(LN(x)), then + ffn(LN(.))."""
        x = x + self.attn(self.attention_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class DifferenceTransformer(nn.Module):
    """Refines the deepest difference map globally: (B, C, h, w) -> (B, token_dim, h, w).

    A CNN difference only sees a local receptive field; self-attention over the h*w tokens lets
    the model discount differences explained elsewhere (global illumination, slight shifts).
    """

    def __init__(self, cfg: AnoDFDNetConfig) -> None:
        super().__init__()
        self.grid = cfg.img_size // _DOWNSAMPLE
        self.patch_embed = nn.Conv2d(cfg.latent_dim, cfg.token_dim, 1)  # with bias (param count)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, cfg.token_dim)) if cfg.pos_embed else None
        self.pos_drop = nn.Dropout(cfg.pos_drop)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.token_dim, eps=cfg.ln_eps)

    def _pos_embed(self, h: int, w: int) -> torch.Tensor | float:
        if self.pos_embed is None:
            return 0.0
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed
        # Other input sizes: resample the 16x16 grid of embeddings bilinearly.
        pos = self.pos_embed.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=(h, w), mode="bilinear", align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deepest difference map (B, C, h, w) -> tokens through the blocks -> map (B, D, h, w)."""
        x = self.patch_embed(x)
        b, c, h, w = x.shape
        x = self.pos_drop(x.flatten(2).transpose(1, 2) + self._pos_embed(h, w))
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return x.transpose(1, 2).reshape(b, c, h, w)


class Decoder(nn.Module):
    """U-Net decoder over the differences; each stage sees cat(previous, skip difference)."""

    def __init__(self, cfg: AnoDFDNetConfig) -> None:
        super().__init__()
        w1, w2, w3, w4 = cfg.widths
        self.d5 = _up(cfg.token_dim, w4, 3, 1)
        self.d4 = _up(2 * w4, w3, 4, 2)
        self.d3 = _up(2 * w3, w2, 4, 2)
        self.d2 = _up(2 * w2, w1, 4, 2)
        self.d_el = nn.Sequential(
            nn.Conv2d(2 * w1, w1, 3, 1, 1, bias=False), nn.BatchNorm2d(w1), nn.ReLU(inplace=True)
        )
        self.d1 = nn.ConvTranspose2d(2 * w1, cfg.out_chans, 4, 2, 1, bias=cfg.final_bias)

    def forward(self, diffs: list[torch.Tensor], deep: torch.Tensor) -> torch.Tensor:
        """Fuse the Transformer output with the skip differences, deep to shallow, into the logit map."""
        e1, e_el, e2, e3, e4 = diffs
        x = self.d5(deep)
        x = self.d4(torch.cat((x, e4), 1))
        x = self.d3(torch.cat((x, e3), 1))
        x = self.d2(torch.cat((x, e2), 1))
        x = self.d_el(torch.cat((x, e_el), 1))
        return self.d1(torch.cat((x, e1), 1))


class AnoDFDNet(nn.Module):
    """cur/his pair -> per-pixel anomaly probability map (B, 1, H, W).

    Inputs: (B, 3, H, W) float, normalised with ``MEAN``/``STD``; H, W multiples of 16
    (the paper uses 256).  Works on any device, under autocast and with channels_last.

    ``cfg.attn_out_proj``: True (default) is standard multi-head attention, output projection
    applied.  False reproduces the published reference code, which computes the projection
    but returns the un-projected context (the projection weights still exist and count).
    """

    def __init__(self, cfg: AnoDFDNetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or AnoDFDNetConfig()
        if cfg.encoder == "dcgan":
            self.encoder: nn.Module = Encoder(cfg)
            self.transformer = DifferenceTransformer(cfg)
            self.decoder: nn.Module = Decoder(cfg)
            self.apply(_init_weights)
            return
        from .pretrained_parts import PyramidDecoder, TimmEncoder

        enc = TimmEncoder(cfg.encoder, cfg.out_indices, cfg.pretrained, cfg.freeze_stages)
        if enc.channels[-1] != cfg.latent_dim:
            raise ValueError(f"latent_dim {cfg.latent_dim} must equal the deepest {cfg.encoder} stage's channels {enc.channels[-1]}")
        self.transformer = DifferenceTransformer(cfg)
        self.decoder = PyramidDecoder(cfg.token_dim, enc.channels[::-1], cfg.decoder_widths,
                                      cfg.in_chans if cfg.pixel_skip else 0, cfg.out_chans, cfg.head_slope)
        self.decoder.apply(_init_weights)
        self.encoder = enc  # after the init: the ImageNet weights stay as loaded

    def forward_logits(self, cur: torch.Tensor, his: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid map; train with BCEWithLogits (same loss as BCE on the sigmoid, stable)."""
        if cur.shape != his.shape:
            raise ValueError(f"cur {tuple(cur.shape)} and his {tuple(his.shape)} differ in shape")
        if cur.shape[-2] % _DOWNSAMPLE or cur.shape[-1] % _DOWNSAMPLE:
            raise ValueError(f"H, W must be multiples of {_DOWNSAMPLE}, got {tuple(cur.shape[-2:])}")
        if not self.cfg.multiscale:
            return self._forward_one(cur, his)
        z = self._at_scale(cur, his, self.cfg.decide_scale)
        for s in self.cfg.rank_scales:  # monotone, < -RANK_MARGIN: orders sub-threshold pixels, never decides
            z = torch.maximum(z, -RANK_MARGIN - F.softplus(-self._at_scale(cur, his, s)))
        return z

    def _at_scale(self, cur: torch.Tensor, his: torch.Tensor, s: float) -> torch.Tensor:
        """Logits of the pair resized by ``s`` (antialiased, like the resize that prepares pairs; sides stay
        multiples of 16), resized back to the input size."""
        if s == 1.0:
            return self._forward_one(cur, his)
        size = cur.shape[-2:]
        hw = [max(_DOWNSAMPLE, round(n * s / _DOWNSAMPLE) * _DOWNSAMPLE) for n in size]
        c, h = (F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False) for x in (cur, his))
        return F.interpolate(self._forward_one(c, h), size=size, mode="bilinear", align_corners=False)

    def _forward_one(self, cur: torch.Tensor, his: torch.Tensor) -> torch.Tensor:
        b = cur.shape[0]
        if self.cfg.encoder != "dcgan":
            return self._forward_pyramid(cur, his)
        # One 2B batch instead of two passes (the reference does two): in train mode BN then
        # normalises cur and his with the SAME batch statistics, so |F_c - F_h| reflects content
        # differences only, not a per-stream BN shift; running stats update once per step, the
        # map stays symmetric in (cur, his) in train mode too, and the convs run once.
        feats = self.encoder(torch.cat((cur, his), 0))
        diffs = [(f[:b] - f[b:]).abs() for f in feats]
        return self.decoder(diffs[:5], self.transformer(diffs[5]))

    def _forward_pyramid(self, cur: torch.Tensor, his: torch.Tensor) -> torch.Tensor:
        b = cur.shape[0]
        feats = self.encoder(torch.cat((cur, his), 0))
        if self.cfg.feature_norm == "l2":  # differences of directions: invariant to a per-location gain
            feats = [F.normalize(f.float(), dim=1).to(f.dtype) for f in feats]
        diffs = [(f[:b] - f[b:]).abs() for f in feats]
        deep = self.transformer(diffs[-1])
        pixel = (cur - his).abs() if self.cfg.pixel_skip else None
        return self.decoder(deep, diffs[::-1], pixel, cur.shape[-2:])

    def forward(self, cur: torch.Tensor, his: torch.Tensor) -> torch.Tensor:
        """Anomaly map in [0, 1], (B, out_chans, H, W): ``sigmoid(logit / map_temperature)``."""
        logits = self.forward_logits(cur, his)
        t = self.cfg.map_temperature
        return torch.sigmoid(logits if t == 1.0 else logits / t)


def _init_weights(m: nn.Module) -> None:
    # Reference (DCGAN) init.  Like the reference, this also hits the 1x1 patch-embedding conv
    # (weight only; biases keep PyTorch defaults).  q/k/v/out Linears keep PyTorch defaults;
    # the MLP inits itself (Xavier); the position embedding starts at zero.
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


@register_model("anodfdnet", presets=PRESETS, info=ModelInfo(ModelKind.PAIRED, INPUT_SIZE, size_field="img_size"))
def anodfdnet(preset: str | None = None, **overrides: object) -> AnoDFDNet:
    """Registry factory: ``PRESETS[preset or "paper"]`` with ``AnoDFDNetConfig`` fields overridden."""
    return AnoDFDNet(preset_config("AnoDFDNet", PRESETS, preset, overrides))  # type: ignore[arg-type]
