"""What a training run is told (``TrainConfig``) and what it returns (``TrainResult``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class TrainConfig:
    """Settings of :func:`~anodet_core.training.train_pairs`; the defaults are the paper's protocol plus the
    switchable extras (photometric jitter, synthetic changes, Dice)."""

    epochs: int = 20
    max_seconds: float = math.inf
    batch_size: int = 4
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    seed: int = 0
    photometric: bool = True
    loss: str = "bce+dice"  # "bce": the paper's loss; "bce+dice" adds soft Dice for tiny anomalies
    synthetic: float = 0.5  # probability per sample of a pasted synthetic change (0: the paper's protocol)
    device: str = "cpu"
    bf16: bool = False  # autocast bf16 for the forward/backward (CPU with AVX-512 BF16, or GPU)
    max_steps: int = 0  # optimiser steps in all (0: no limit but the epochs); bounds fine-tuning and pretraining
    crop: int = 0  # train on random crop x crop windows of each batch (0: whole 256x256 pairs); multiple of 16
    lr_schedule: str = "constant"  # "constant" | "cosine" (over max_steps, else over all epochs' steps)
    channels_last: bool = False  # channels_last memory format in training (faster with bf16 on CPU)


@dataclass
class TrainResult:
    """Outcome of :func:`~anodet_core.training.train_pairs`: the best epoch's weights and validation record,
    the per-epoch history, the wall time and the operating threshold."""

    best_state: dict[str, torch.Tensor]
    best_epoch: int  # 1-based; 0: no epoch beat the starting weights (train_pairs(start_is_candidate=True))
    best_val: dict[str, float]
    history: list[dict[str, Any]]
    seconds: float
    threshold: float = 0.5  # operating threshold: best validation F1 (0.5 without validation data)
