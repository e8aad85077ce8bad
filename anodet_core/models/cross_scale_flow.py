"""CS-Flow's normalizing-flow building blocks (Rudolph et al., WACV 2022): cross-scale subnetworks, affine
coupling blocks and the permute-and-couple flow over a list of per-scale feature maps.

Model-agnostic: :mod:`anodet_core.models.csaflow` stacks them on attended backbone features; the flow's
equations and the reference details they reproduce are in that module's docstring.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CrossScaleFlowConfig", "CrossConvolutions", "CrossScaleCoupling", "CrossScaleFlow"]

_SOFTCLAMP = 0.636  # reference constant (~2/pi): bounds the log-scale to (-alpha, alpha)


class CrossScaleFlowConfig(Protocol):
    """The hyper-parameters :class:`CrossScaleFlow` reads (``CSAFlowConfig`` provides them)."""

    @property
    def n_scales(self) -> int:
        """Feature scales the flow couples."""
    @property
    def n_blocks(self) -> int:
        """Coupling blocks."""
    @property
    def kernel_sizes(self) -> tuple[int, ...]:
        """Convolution kernel size per block."""
    @property
    def hidden_channels(self) -> int:
        """Hidden channels of the cross-scale convolutions."""
    @property
    def clamp(self) -> float:
        """Soft clamp of the log scale."""
    @property
    def leaky_slope(self) -> float:
        """Negative slope of the LeakyReLUs."""
    @property
    def perm_seed(self) -> int:
        """Seed of the fixed channel permutations."""


class CrossConvolutions(nn.Module):
    """Cross-scale subnetwork: per scale conv -> LeakyReLU -> conv, plus neighbour terms.

    Scale i (0 = finest) receives conv(upsample(h_{i+1})) from the coarser and a stride-2
    conv(h_{i-1}) from the finer neighbour, h being the hidden activations (reference layout).
    Outputs are multiplied by per-scale gammas, zero at init.
    """

    def __init__(self, cin: int, cout: int, hidden: int, kernel_size: int, n_scales: int, slope: float) -> None:
        super().__init__()
        p = kernel_size // 2
        self.n_scales = n_scales
        self.slope = slope
        self.conv_in = nn.ModuleList(nn.Conv2d(cin, hidden, kernel_size, padding=p) for _ in range(n_scales))
        self.conv_out = nn.ModuleList(nn.Conv2d(hidden, cout, kernel_size, padding=p) for _ in range(n_scales))
        # up[i]: coarser scale i+1 -> i; down[i]: finer scale i -> i+1.
        self.up = nn.ModuleList(nn.Conv2d(hidden, cout, kernel_size, padding=p) for _ in range(n_scales - 1))
        self.down = nn.ModuleList(
            nn.Conv2d(hidden, cout, kernel_size, stride=2, padding=p) for _ in range(n_scales - 1)
        )
        self.gamma = nn.Parameter(torch.zeros(n_scales))

    def forward(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per-scale outputs (``cout`` channels, each at its input's resolution) from the per-scale inputs."""
        hs = [F.leaky_relu(conv(x), self.slope) for conv, x in zip(self.conv_in, xs)]
        outs = []
        for i, h in enumerate(hs):
            out = self.conv_out[i](h)
            if i + 1 < self.n_scales:
                up = F.interpolate(hs[i + 1], size=h.shape[-2:], mode="bilinear", align_corners=False)
                out = out + self.up[i](up)
            if i > 0:
                out = out + self.down[i - 1](hs[i - 1])
            outs.append(out * self.gamma[i])
        return outs


class CrossScaleCoupling(nn.Module):
    """Two affine couplings over a channel split, conditioned across scales (GLOW-style)."""

    def __init__(self, channels: int, hidden: int, kernel_size: int, n_scales: int, clamp: float, slope: float) -> None:
        super().__init__()
        self.len1 = channels // 2
        self.len2 = channels - self.len1
        self.clamp = clamp
        self.s1 = CrossConvolutions(self.len1, 2 * self.len2, hidden, kernel_size, n_scales, slope)
        self.s2 = CrossConvolutions(self.len2, 2 * self.len1, hidden, kernel_size, n_scales, slope)

    def _log_e(self, s: torch.Tensor) -> torch.Tensor:
        """Soft-clamped log-scale: ``clamp * 0.636 * atan(s / clamp)``, within (-clamp, clamp)."""
        return self.clamp * _SOFTCLAMP * torch.atan(s / self.clamp)

    def forward(self, xs: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(coupled maps per scale, log|det J| per sample (B,)), summed over both couplings and all scales."""
        a = [x[:, : self.len1] for x in xs]
        b = [x[:, self.len1 :] for x in xs]
        log_det = xs[0].new_zeros(xs[0].shape[0])
        new_a = []
        for ai, r in zip(a, self.s2(b)):
            log_s = self._log_e(r[:, : self.len1])
            new_a.append(ai * log_s.exp() + r[:, self.len1 :])
            log_det = log_det + log_s.sum(dim=(1, 2, 3))
        new_b = []
        for bi, r in zip(b, self.s1(new_a)):
            log_s = self._log_e(r[:, : self.len2])
            new_b.append(bi * log_s.exp() + r[:, self.len2 :])
            log_det = log_det + log_s.sum(dim=(1, 2, 3))
        return [torch.cat(p, dim=1) for p in zip(new_a, new_b)], log_det

    def inverse(self, ys: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The exact inverse of :meth:`forward`: per-scale inputs from its outputs."""
        a = [y[:, : self.len1] for y in ys]
        b = [y[:, self.len1 :] for y in ys]
        old_b = [(bi - r[:, self.len2 :]) * (-self._log_e(r[:, : self.len2])).exp() for bi, r in zip(b, self.s1(a))]
        old_a = [(ai - r[:, self.len1 :]) * (-self._log_e(r[:, : self.len1])).exp() for ai, r in zip(a, self.s2(old_b))]
        return [torch.cat(p, dim=1) for p in zip(old_a, old_b)]


class CrossScaleFlow(nn.Module):
    """CS-Flow: [permute -> cross-scale coupling] x n_blocks over a list of per-scale maps."""

    def __init__(self, channels: int, cfg: CrossScaleFlowConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            CrossScaleCoupling(channels, cfg.hidden_channels, k, cfg.n_scales, cfg.clamp, cfg.leaky_slope)
            for k in cfg.kernel_sizes
        )
        for k in range(cfg.n_blocks):
            g = torch.Generator().manual_seed(cfg.perm_seed + k)
            perms = torch.stack([torch.randperm(channels, generator=g) for _ in range(cfg.n_scales)])
            self.register_buffer(f"perm{k}", perms)
            self.register_buffer(f"perm_inv{k}", torch.argsort(perms, dim=1))

    def forward(self, xs: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(latent maps per scale, log|det J| per sample (B,)) of the per-scale feature maps."""
        log_det = xs[0].new_zeros(xs[0].shape[0])
        zs = list(xs)
        for k, block in enumerate(self.blocks):
            perm = getattr(self, f"perm{k}")
            zs, ld = block([z[:, perm[i]] for i, z in enumerate(zs)])
            log_det = log_det + ld
        return zs, log_det

    def inverse(self, zs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per-scale feature maps from latents: the blocks undone in reverse order, permutations inverted."""
        xs = list(zs)
        for k in reversed(range(len(self.blocks))):
            inv = getattr(self, f"perm_inv{k}")
            xs = [x[:, inv[i]] for i, x in enumerate(self.blocks[k].inverse(xs))]  # type: ignore[operator]  # ModuleList items are typed Module
        return xs
