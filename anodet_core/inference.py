"""Batched AnoDFDNet inference: device and precision choice (maps to findings: :mod:`anodet_core.scoring`)."""

from __future__ import annotations

import contextlib

import numpy as np
import torch


def bf16_supported(device: str) -> bool:
    """bf16 autocast only where the hardware has native bf16 math; elsewhere it is slower than fp32."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def to_input(batch: np.ndarray, device: str, channels_last: bool) -> torch.Tensor:
    """uint8 NHWC -> float NCHW normalised with mean = std = 0.5 (i.e. [-1, 1]), as the paper trains."""
    batch = np.ascontiguousarray(batch)
    if not batch.flags.writeable:  # decoded images can be read-only views; torch wants to own writable memory
        batch = batch.copy()
    t = torch.from_numpy(batch).to(device, non_blocking=True)
    t = t.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t.contiguous()


class Predictor:
    """A loaded model plus how to run it: the production fast path, or the reference eager fp32 way."""

    def __init__(self, model: torch.nn.Module, device: str = "cpu", fast: bool = True):
        self.device = device
        self.bf16 = fast and bf16_supported(device)
        self.channels_last = fast
        model = model.to(device).eval()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda" if self.device.startswith("cuda") else "cpu", dtype=torch.bfloat16)

    @torch.inference_mode()
    def predict(self, cur: np.ndarray, his: np.ndarray) -> torch.Tensor:
        """Anomaly maps (B, H, W) float32 in [0, 1] for uint8 NHWC batches of aligned pairs."""
        if cur.shape != his.shape or cur.ndim != 4 or cur.shape[-1] != 3:
            raise ValueError(f"expected two uint8 NHWC batches of equal shape, got {cur.shape} and {his.shape}")
        with self._autocast():
            out = self.model(to_input(cur, self.device, self.channels_last), to_input(his, self.device, self.channels_last))
        return out.float()[:, 0]
