"""Batched AnoDFDNet inference: device and precision choice, maps back to native size, findings."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


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


def to_native(score: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """One model-resolution map (H, W) to the capture's native (width, height), bilinear, as float32 numpy."""
    w, h = size
    up = F.interpolate(score[None, None], size=(h, w), mode="bilinear", align_corners=False)
    return up[0, 0].clamp_(0, 1).cpu().numpy()


@dataclass
class Finding:
    x0: int
    y0: int
    x1: int
    y1: int
    area_px: int
    peak_score: float
    mean_score: float


def find_regions(score: np.ndarray, threshold: float = 0.5, min_area: int = 1) -> list[Finding]:
    """Connected regions (8-connectivity) with score > threshold and at least ``min_area`` px, by peak score."""
    above = score > threshold
    if not above.any():  # the common case costs one pass
        return []
    labels, n = ndimage.label(above, structure=np.ones((3, 3), bool))
    idx = np.arange(1, n + 1)
    areas = ndimage.sum_labels(above, labels, idx)
    peaks = ndimage.maximum(score, labels, idx)
    means = ndimage.mean(score, labels, idx)
    out = []
    for k, sl in enumerate(ndimage.find_objects(labels)):
        if sl is None or areas[k] < min_area:
            continue
        out.append(Finding(sl[1].start, sl[0].start, sl[1].stop, sl[0].stop, int(areas[k]), float(peaks[k]), float(means[k])))
    out.sort(key=lambda f: -f.peak_score)
    return out
