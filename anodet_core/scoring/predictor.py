"""Batched AnoDFDNet inference: device and precision choice (maps to findings: :mod:`anodet_core.scoring.postprocess`)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..models._registry import ModelInfo, instance_info

if TYPE_CHECKING:
    from ..export.graph import Runner


def bf16_supported(device: str) -> bool:
    """bf16 autocast only where the hardware has native bf16 math; elsewhere it is slower than fp32."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def to_input(batch: np.ndarray, device: str, channels_last: bool, mean: Sequence[float] = (0.5, 0.5, 0.5),
             std: Sequence[float] = (0.5, 0.5, 0.5)) -> torch.Tensor:
    """uint8 NHWC -> float NCHW, ``(x / 255 - mean) / std`` per channel (default the paper's mean = std = 0.5,
    i.e. [-1, 1]; a model's own are in its :class:`~anodet_core.models.ModelInfo`, see :func:`model_input`)."""
    batch = np.ascontiguousarray(batch)
    if not batch.flags.writeable:  # decoded images can be read-only views; torch wants to own writable memory
        batch = batch.copy()
    t = torch.from_numpy(batch).to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    if tuple(mean) == (0.5, 0.5, 0.5) and tuple(std) == (0.5, 0.5, 0.5):
        t = t.div_(127.5).sub_(1.0)  # the paper's normalisation, in place (the fast path's hot loop)
    else:
        m = torch.tensor(mean, device=t.device).view(1, 3, 1, 1) * 255.0
        d = torch.tensor(std, device=t.device).view(1, 3, 1, 1) * 255.0
        t = t.sub_(m).div_(d)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t.contiguous()


def model_input(batch: np.ndarray, model: torch.nn.Module, device: str, channels_last: bool = False) -> torch.Tensor:
    """:func:`to_input` with ``model``'s registered normalisation (``model.model_info``)."""
    info = instance_info(model)
    return to_input(batch, device, channels_last, info.mean, info.std)


class Predictor:
    """A loaded model plus how to run it: the production fast path, the reference eager fp32 way, or an exported
    graph (``runner``, :mod:`anodet_core.export`; CPU, fp32 inputs, ``backend`` names it)."""

    def __init__(self, model: torch.nn.Module, device: str = "cpu", fast: bool = True, *,
                 runner: Runner | None = None, backend: str | None = None):
        self.device = "cpu" if runner is not None else device
        self.runner = runner
        self.bf16 = runner is None and fast and bf16_supported(device)
        self.channels_last = runner is None and fast
        model = model.to(self.device).eval()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.info: ModelInfo = instance_info(model)  # input size and normalisation the registry declares
        self.backend: str = backend or ("torch" if fast else "torch-eager")

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda" if self.device.startswith("cuda") else "cpu", dtype=torch.bfloat16)

    def _input(self, batch: np.ndarray) -> torch.Tensor:
        return to_input(batch, self.device, self.channels_last, self.info.mean, self.info.std)

    @torch.inference_mode()
    def predict(self, cur: np.ndarray, his: np.ndarray) -> torch.Tensor:
        """Anomaly maps (B, H, W) float32 in [0, 1] for uint8 NHWC batches of aligned pairs."""
        if cur.shape != his.shape or cur.ndim != 4 or cur.shape[-1] != 3:
            raise ValueError(f"expected two uint8 NHWC batches of equal shape, got {cur.shape} and {his.shape}")
        if self.runner is not None:
            return torch.from_numpy(self.runner(self._input(cur).numpy(), self._input(his).numpy())[0])[:, 0]
        with self._autocast():
            out = self.model(self._input(cur), self._input(his))
        return out.float()[:, 0]
