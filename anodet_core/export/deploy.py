"""The deploy form of a model: the same function rewritten in the ops that CPU int8 runtimes run fast.

Profiled on the AVX2-only class (OpenVINO 2026.4, NNCF int8, paper preset, batch 8), two kinds of layer kept the
int8 graph from running faster than fp32: OpenVINO ran every ``ConvTranspose2d`` in fp32 (a third of the int8
graph's time), and it ran the Transformer's quantized ``Linear`` layers on a generic int8 GEMM no faster than
their fp32 kernels, while int8 convolutions (1x1 too) ran about twice as fast as fp32. So the export rewrites:

- a stride-2, 4x4, padding-1 ``ConvTranspose2d`` (the paper decoder's upsampling) as one 2x2 convolution with
  four output phases over the input padded by one, interleaved into the 2x output (depth-to-space): the same
  multiply-accumulates (plus one row and column per phase), exactly the same sums; a stride-1 ``ConvTranspose2d``
  as the convolution with the flipped kernel;
- on request (``channels_first_transformer``), the ``DifferenceTransformer`` in channels-first form: tokens stay a
  (B, C, h, w) map, every ``Linear`` is a 1x1 convolution sharing its weights, LayerNorm normalises over channels,
  attention is two batched matmuls. Exact in fp32, but int8 quantizes it differently: the int8 export tries it and
  keeps it only when it passes the F1 guard (:func:`anodet_core.registry.exports.quantize_guarded`).

Only what is exported changes: the torch model and its checkpoint stay as they are, and every export is checked
against the torch model (:mod:`anodet_core.registry.exports`, max abs difference) before it is recorded.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.anodfdnet import Attention, Block, DifferenceTransformer

__all__ = ["PhaseConvTranspose", "ChannelsFirstTransformer", "deploy_form"]


def _fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d | None,
             out_dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of a conv with an eval-mode BatchNorm after it folded in (``out_dim``: the output axis)."""
    if bn is None:
        return weight, bias
    assert bn.running_var is not None and bn.running_mean is not None
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0.0)
    if bias is not None:
        shift = shift + bias * scale
    shape = [1] * weight.ndim
    shape[out_dim] = -1
    return weight * scale.view(shape), shift


class PhaseConvTranspose(nn.Module):
    """``ConvTranspose2d(k=4, stride=2, padding=1)`` (optionally followed by an eval BatchNorm) as a 2x2 conv.

    Along each axis, output ``2m`` is ``x[m-1] w[3] + x[m] w[1]`` and output ``2m+1`` is ``x[m] w[2] + x[m+1] w[0]``;
    on the input padded by one, both are 2-tap correlations, read at offset 0 and 1 of the (n+1)-long result.
    """

    def __init__(self, deconv: nn.ConvTranspose2d, bn: nn.BatchNorm2d | None = None) -> None:
        super().__init__()
        if not phase_convertible(deconv):
            raise ValueError(f"not a stride-2 4x4 padding-1 ConvTranspose2d: {deconv}")
        bias = deconv.bias.detach() if deconv.bias is not None else None
        w, bias = _fold_bn(deconv.weight.detach(), bias, bn, 1)  # (Cin, Cout, 4, 4): Cout is axis 1
        taps = ((3, 1), (2, 0))  # kernel indices read by phase 0 and phase 1, input offsets -1/0 and 0/+1
        phases = [w[:, :, list(taps[a])][:, :, :, list(taps[b])] for a in (0, 1) for b in (0, 1)]
        weight = torch.cat([p.transpose(0, 1) for p in phases], 0)  # (4 Cout, Cin, 2, 2), phase-major
        bias = bias.repeat(4) if bias is not None else None
        self.cout = deconv.out_channels
        self.conv = nn.Conv2d(deconv.in_channels, 4 * self.cout, 2, padding=1, bias=bias is not None)
        with torch.no_grad():
            self.conv.weight.copy_(weight)
            if bias is not None:
                assert self.conv.bias is not None
                self.conv.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Cin, H, W) -> (B, Cout, 2H, 2W)."""
        b, _, h, w = x.shape
        y = self.conv(x).view(b, 4, self.cout, h + 1, w + 1)
        phases = torch.stack([y[:, 2 * a + c, :, a : a + h, c : c + w] for a in (0, 1) for c in (0, 1)], 2)
        return F.pixel_shuffle(phases.reshape(b, 4 * self.cout, h, w), 2)  # channel 4 co + 2 a + c -> (2m+a, 2n+c)


def phase_convertible(m: nn.Module) -> bool:
    """Whether :class:`PhaseConvTranspose` can stand for ``m``."""
    return (isinstance(m, nn.ConvTranspose2d) and m.kernel_size == (4, 4) and m.stride == (2, 2)
            and m.padding == (1, 1) and m.output_padding == (0, 0) and m.dilation == (1, 1) and m.groups == 1)


def _stride1_as_conv(deconv: nn.ConvTranspose2d) -> nn.Conv2d | None:
    """A stride-1 ``ConvTranspose2d`` as the convolution with the flipped kernel (padding k - 1 - p); None if not
    one (other strides, output padding, groups, dilation)."""
    k, p = deconv.kernel_size, deconv.padding
    if (deconv.stride != (1, 1) or deconv.output_padding != (0, 0) or deconv.dilation != (1, 1) or deconv.groups != 1
            or not isinstance(p, tuple) or any(pi > ki - 1 for pi, ki in zip(p, k))):
        return None
    conv = nn.Conv2d(deconv.in_channels, deconv.out_channels, (k[0], k[1]), padding=(k[0] - 1 - p[0], k[1] - 1 - p[1]),
                     bias=deconv.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(deconv.weight.flip(2, 3).transpose(0, 1))
        if deconv.bias is not None:
            assert conv.bias is not None
            conv.bias.copy_(deconv.bias)
    return conv


def _layer_norm_c(x: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    """``ln`` over the channels of a (B, C, h, w) map."""
    mean = x.mean(1, keepdim=True)
    xc = x - mean
    y = xc * (xc.pow(2).mean(1, keepdim=True) + ln.eps).rsqrt()
    if ln.weight is not None:
        y = y * ln.weight.view(1, -1, 1, 1)
    if ln.bias is not None:
        y = y + ln.bias.view(1, -1, 1, 1)
    return y


def _conv1x1(x: torch.Tensor, lin: nn.Linear) -> torch.Tensor:
    return F.conv2d(x, lin.weight[:, :, None, None], lin.bias)


class ChannelsFirstTransformer(nn.Module):
    """An eval-mode ``DifferenceTransformer`` computed on (B, C, h, w) maps; same weights, same function."""

    def __init__(self, transformer: DifferenceTransformer) -> None:
        super().__init__()
        self.t = transformer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deepest difference (B, C, h, w) -> (B, D, h, w), as ``DifferenceTransformer.forward`` in eval mode."""
        t = self.t
        x = t.patch_embed(x)
        b, c, h, w = x.shape
        pos = t._pos_embed(h, w)
        if isinstance(pos, torch.Tensor):
            x = x + pos.transpose(1, 2).reshape(1, c, h, w)
        for blk in t.blocks:
            assert isinstance(blk, Block)
            x = x + self._attention(blk.attn, _layer_norm_c(x, blk.attention_norm))
            y = _conv1x1(_layer_norm_c(x, blk.ffn_norm), blk.ffn.fc1)
            x = x + _conv1x1(blk.ffn.act(y), blk.ffn.fc2)
        return _layer_norm_c(x, t.norm)

    @staticmethod
    def _attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        heads = attn.num_heads
        q, k, v = (_conv1x1(x, lin).view(b, heads, c // heads, h * w) for lin in (attn.query, attn.key, attn.value))
        scores = torch.matmul(q.transpose(2, 3), k) * (1.0 / math.sqrt(c // heads))  # (B, heads, N, N)
        ctx = torch.matmul(v, scores.softmax(-1).transpose(2, 3)).reshape(b, c, h, w)  # (B, heads, hd, N)
        return _conv1x1(ctx, attn.out) if attn.out_proj else ctx


def deploy_form(model: nn.Module, channels_first_transformer: bool = False) -> nn.Module:
    """An eval-mode copy of ``model`` with the rewrites of the module docstring applied; ``model`` is untouched.

    ``channels_first_transformer`` is off by default: with it, NNCF's int8 of the production model lost 0.12 pixel
    F1 on 96 labelled bench pairs (0.011 without), so exports keep the Transformer as it is.
    """
    out = copy.deepcopy(model).eval()

    def rewrite(parent: nn.Module) -> None:
        names = list(parent._modules)
        for i, name in enumerate(names):
            child = parent._modules[name]
            if child is None:
                continue
            if isinstance(child, DifferenceTransformer) and channels_first_transformer:
                parent._modules[name] = ChannelsFirstTransformer(child)
                continue
            if isinstance(child, nn.ConvTranspose2d):
                nxt = parent._modules.get(names[i + 1]) if i + 1 < len(names) else None
                if phase_convertible(child):
                    bn = nxt if isinstance(nxt, nn.BatchNorm2d) and isinstance(parent, nn.Sequential) else None
                    parent._modules[name] = PhaseConvTranspose(child, bn)
                    if bn is not None:
                        parent._modules[names[i + 1]] = nn.Identity()
                    continue
                conv = _stride1_as_conv(child)
                if conv is not None:
                    parent._modules[name] = conv
                continue
            rewrite(child)

    rewrite(out)
    return out.eval()
