"""Model-only throughput: the reference way (eager fp32, NCHW) against the production fast path, side by side.

Both paths run in the same process on the same inputs, alternating batch by batch after a warm-up, so a busy
neighbour slows both alike instead of skewing the ratio. Throughput is pairs over the summed wall time of the
timed batches, as the end-to-end figure of ``anodet bench`` is (pairs over the wall time of whole nightly runs):
a median of batch times would leave out the slow stretches that a run's total includes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..scoring.predictor import Predictor


@dataclass
class ModelSpeed:
    """Throughput (pairs/s) of the reference and fast paths, and the settings they were measured at."""

    fp32_pairs_s: float
    fast_pairs_s: float
    batch_size: int
    repeats: int
    bf16: bool
    channels_last: bool

    @property
    def speedup(self) -> float:
        """Fast-path throughput over reference throughput (> 1: the fast path is faster)."""
        return self.fast_pairs_s / self.fp32_pairs_s


def random_pairs(n: int, size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` seeded random (current, history) uint8 image pairs, each NxSxSx3; history is current plus noise in [-8, 8]."""
    rng = np.random.default_rng(seed)
    cur = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    his = np.clip(cur.astype(np.int16) + rng.integers(-8, 9, cur.shape), 0, 255).astype(np.uint8)
    return cur, his


def compare_model_paths(
    model_fp32: torch.nn.Module,
    model_fast: torch.nn.Module,
    *,
    device: str = "cpu",
    batch_size: int = 8,
    repeats: int = 5,
    warmup: int = 2,
) -> ModelSpeed:
    """Pairs/s of ``Predictor(fast=False)`` (reference) and ``Predictor(fast=True)``; two copies of one model."""
    ref = Predictor(model_fp32, device, fast=False)
    fast = Predictor(model_fast, device, fast=True)
    cur, his = random_pairs(batch_size)

    def once(p: Predictor) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        p.predict(cur, his)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for _ in range(warmup):
        once(ref)
        once(fast)
    t_ref, t_fast = [], []
    for _ in range(repeats):
        t_ref.append(once(ref))
        t_fast.append(once(fast))
    return ModelSpeed(
        fp32_pairs_s=batch_size * repeats / sum(t_ref),
        fast_pairs_s=batch_size * repeats / sum(t_fast),
        batch_size=batch_size,
        repeats=repeats,
        bf16=fast.bf16,
        channels_last=fast.channels_last,
    )
