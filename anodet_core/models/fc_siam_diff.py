"""FC-Siam-diff baseline (AnoDFDNet paper, Table I).

Daudt, Le Saux, Boulch, "Fully Convolutional Siamese Networks for Change Detection",
ICIP 2018 (reference code: github.com/rcdaudt/fully_convolutional_change_detection,
``siamunet_diff.py``).  cur and his go through one shared encoder; the skip connections carry
the absolute feature differences |F_cur - F_his|, and a transposed-convolution decoder turns
them into the change map.

Encoder (shared), per stage: n x (3x3 conv with bias -> BN -> ReLU -> Dropout2d(0.2)), then a
2x2 max-pool; widths 16/32/64/128 with 2, 2, 3, 3 convs.  Decoder, deepest first: a stride-2
3x3 ConvTranspose (bias, no BN) up-samples, the result is concatenated with the stage's
|skip difference|, then 3x3 stride-1 ConvTransposes (bias -> BN -> ReLU -> Dropout2d(0.2))
with 3, 3, 2, 2 layers; the very last one (16 -> out_chans) is a bare ConvTranspose (logits).

Choices where we differ from / pin down the reference:
* Bottleneck.  The reference decoder starts from the pooled deepest features of the *second*
  input only (its ``x4p`` is overwritten by the second pass), which makes the model
  asymmetric.  The default ``bottleneck="diff"`` starts from |pool(F4_cur) - pool(F4_his)|
  instead, in the spirit of the paper (all information reaching the decoder is a difference)
  and symmetric in (cur, his).  ``bottleneck="his"`` reproduces the reference code.
* One 2B batch through the encoder (as in AnoDFDNet): in train mode BN normalises cur and his
  with the same batch statistics.  Dropout masks still differ per stream (as in the
  reference, which runs two passes), so the map is symmetric in eval mode, and in train mode
  only with ``dropout=0``.
* One output channel (sigmoid / BCE) instead of the reference's 2-class LogSoftmax.
* H, W must be multiples of 16, so the reference's ReplicationPad2d is never needed.
* Weights keep PyTorch's default init, as in the reference.

Parameter counts (in_chans=3, out_chans=1):
    paper  widths (16, 32, 64, 128): 1,350,001  (4.2 G MACs per pair at 256^2; the 2-class
                                                reference code has 1,350,146)
    lite   widths (8, 16, 32, 64):     338,617  (1.1 G MACs per pair at 256^2)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import preset_config, register_model

__all__ = ["INPUT_SIZE", "MEAN", "STD", "FCSiamDiffConfig", "PRESETS", "FCSiamDiff", "fc_siam_diff"]

INPUT_SIZE: int = 256
MEAN: float = 0.5
STD: float = 0.5
"""Same input convention as AnoDFDNet: (x/255 - MEAN)/STD, i.e. values in [-1, 1]."""

_DOWNSAMPLE = 16  # four 2x2 max-pools
_ENC_DEPTHS = (2, 2, 3, 3)  # convs per encoder stage (reference)
_DEC_DEPTHS = (2, 2, 3, 3)  # stride-1 ConvTransposes per decoder stage, same stage order
_BOTTLENECKS = ("diff", "his")


@dataclass(frozen=True)
class FCSiamDiffConfig:
    """``widths``: the four encoder stage widths (the decoder mirrors them)."""

    in_chans: int = 3
    out_chans: int = 1
    widths: tuple[int, int, int, int] = (16, 32, 64, 128)
    dropout: float = 0.2  # Dropout2d after every BN-ReLU, encoder and decoder (paper: 0.2)
    bottleneck: str = "diff"  # "diff": |pool(F4_c) - pool(F4_h)|; "his": reference code

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(self.widths))
        if len(self.widths) != 4:
            raise ValueError(f"widths must have 4 entries, got {self.widths}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.bottleneck not in _BOTTLENECKS:
            raise ValueError(f"bottleneck must be one of {_BOTTLENECKS}, got {self.bottleneck!r}")


PRESETS: dict[str, FCSiamDiffConfig] = {
    # Published widths: 1,350,001 params (1-channel output), 4.2 G MACs per pair at 256^2.
    "paper": FCSiamDiffConfig(),
    # Half width: 338,617 params, 1.1 G MACs (about AnoDFDNet lite's compute).
    "lite": FCSiamDiffConfig(widths=(8, 16, 32, 64)),
}


def _cbr(conv: nn.Module, cout: int, p: float) -> nn.Sequential:
    """conv (with bias, as in the reference) -> BN -> ReLU -> Dropout2d."""
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.Dropout2d(p))


class Encoder(nn.Module):
    """Shared trunk; returns the four pre-pool stage outputs (the skips) and the pooled last."""

    def __init__(self, cfg: FCSiamDiffConfig) -> None:
        super().__init__()
        stages = []
        cin = cfg.in_chans
        for w, n in zip(cfg.widths, _ENC_DEPTHS):
            layers = []
            for _ in range(n):
                layers.append(_cbr(nn.Conv2d(cin, w, 3, 1, 1), w, cfg.dropout))
                cin = w
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(skip features per stage, bottleneck features) of one image."""
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
            x = F.max_pool2d(x, 2, 2)
        return skips, x


class Decoder(nn.Module):
    """Deepest stage first: up-conv, cat |skip diff|, stride-1 ConvTransposes."""

    def __init__(self, cfg: FCSiamDiffConfig) -> None:
        super().__init__()
        ups, stages = [], []
        for i in reversed(range(4)):
            w = cfg.widths[i]
            ups.append(nn.ConvTranspose2d(w, w, 3, 2, 1, output_padding=1))
            n = _DEC_DEPTHS[i]
            layers: list[nn.Module] = []
            cin = 2 * w
            for j in range(n):
                last = j == n - 1
                if last and i == 0:  # final layer: bare ConvTranspose -> logits
                    layers.append(nn.ConvTranspose2d(cin, cfg.out_chans, 3, 1, 1))
                    break
                cout = cfg.widths[i - 1] if last else w
                layers.append(_cbr(nn.ConvTranspose2d(cin, cout, 3, 1, 1), cout, cfg.dropout))
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.ups = nn.ModuleList(ups)
        self.stages = nn.ModuleList(stages)

    def forward(self, diffs: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Upsample the bottleneck difference, concatenating the skip differences, into the logit map."""
        for up, stage, skip in zip(self.ups, self.stages, reversed(diffs)):
            x = stage(torch.cat((up(x), skip), 1))
        return x


class FCSiamDiff(nn.Module):
    """cur/his pair -> per-pixel anomaly probability map (B, out_chans, H, W).

    Inputs: (B, in_chans, H, W) each, normalised to [-1, 1]; H, W multiples of 16.
    """

    def __init__(self, cfg: FCSiamDiffConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or FCSiamDiffConfig()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def forward_logits(self, cur: torch.Tensor, his: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid map; train with BCEWithLogits."""
        if cur.shape != his.shape:
            raise ValueError(f"cur {tuple(cur.shape)} and his {tuple(his.shape)} differ in shape")
        if cur.ndim != 4 or cur.shape[-2] % _DOWNSAMPLE or cur.shape[-1] % _DOWNSAMPLE:
            raise ValueError(
                f"expected (B, C, H, W) with H, W multiples of {_DOWNSAMPLE}, got {tuple(cur.shape)}"
            )
        b = cur.shape[0]
        skips, deep = self.encoder(torch.cat((cur, his), 0))
        diffs = [(f[:b] - f[b:]).abs() for f in skips]
        deep = (deep[:b] - deep[b:]).abs() if self.cfg.bottleneck == "diff" else deep[b:]
        return self.decoder(diffs, deep)

    def forward(self, cur: torch.Tensor, his: torch.Tensor) -> torch.Tensor:
        """Anomaly probability map in [0, 1], (B, out_chans, H, W)."""
        return torch.sigmoid(self.forward_logits(cur, his))


@register_model("fc_siam_diff", presets=PRESETS)
def fc_siam_diff(preset: str | None = None, **overrides: object) -> FCSiamDiff:
    """Registry factory: ``PRESETS[preset or "paper"]`` with ``FCSiamDiffConfig`` fields overridden."""
    return FCSiamDiff(preset_config("FC-Siam-diff", PRESETS, preset, overrides))  # type: ignore[arg-type]
