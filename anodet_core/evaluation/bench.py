"""Model-only throughput: the reference way (eager fp32, NCHW) against the production fast path, side by side.

Both paths run in the same process on the same inputs, alternating batch by batch after a warm-up, so a busy
neighbour slows both alike instead of skewing the ratio. Throughput is pairs over the summed wall time of the
timed batches, as the end-to-end figure of ``anodet bench`` is (pairs over the wall time of whole nightly runs):
a median of batch times would leave out the slow stretches that a run's total includes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..scoring.backends import random_pairs, time_predictors
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
    backend: str = "torch"

    @property
    def speedup(self) -> float:
        """Fast-path throughput over reference throughput (> 1: the fast path is faster)."""
        return self.fast_pairs_s / self.fp32_pairs_s


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
    return compare_predictors(Predictor(model_fp32, device, fast=False), Predictor(model_fast, device, fast=True),
                              batch_size=batch_size, repeats=repeats, warmup=warmup)


def compare_predictors(ref: Predictor, fast: Predictor, *, batch_size: int = 8, repeats: int = 5,
                       warmup: int = 2) -> ModelSpeed:
    """Pairs/s of a reference predictor and a fast one (any backend) on the same random batch, alternating."""
    cur, his = random_pairs(batch_size, ref.info.input_size)
    rates = time_predictors({"ref": ref, "fast": fast}, cur, his, repeats=repeats, warmup=warmup)
    return ModelSpeed(
        fp32_pairs_s=rates["ref"],
        fast_pairs_s=rates["fast"],
        batch_size=batch_size,
        repeats=repeats,
        bf16=fast.bf16,
        channels_last=fast.channels_last,
        backend=fast.backend,
    )
