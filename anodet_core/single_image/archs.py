"""The single-image architectures (CSA-Flow, AnoViT, PatchCore, PaDiM): names, configs, input sizes and normalisation."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..models import ModelInfo, ModelKind, single_image_models
from ..models import config_input_size as registered_input_size
from ..models import model_config as registered_config

__all__ = ["ARCHS", "arch_of", "check_arch", "config_input_size", "mean_std", "model_config", "model_input_size", "to_input"]

ARCHS: tuple[str, ...] = tuple(single_image_models())
"""Registered single-image models (registry kind ``single_image``), sorted: the one list of them."""


def check_arch(arch: str) -> None:
    """``ValueError`` naming the choices unless ``arch`` is a single-image model."""
    if arch not in ARCHS:
        raise ValueError(f"unknown single-image model {arch!r}; choose one of {list(ARCHS)}")


def model_config(arch: str, preset: str | None, overrides: dict[str, Any] | None) -> Any:
    """The dataclass config ``create_model(arch, preset, **overrides)`` would use (validated, nothing built)."""
    check_arch(arch)
    return registered_config(arch, preset, overrides)


def config_input_size(arch: str, preset: str | None = "lite", overrides: dict[str, Any] | None = None) -> int:
    """Square input side of the model built from ``preset`` + ``overrides`` (the registry's ``size_field``)."""
    check_arch(arch)
    return registered_input_size(arch, preset, overrides)


def _info(model: torch.nn.Module) -> ModelInfo:
    info = getattr(model, "model_info", None)  # set by create_model, as timm sets pretrained_cfg
    if not isinstance(info, ModelInfo) or info.kind is not ModelKind.SINGLE_IMAGE:
        raise ValueError(f"not a single-image model built by create_model: {type(model).__name__}")
    return info


def arch_of(model: torch.nn.Module) -> str:
    """The registered name (``"csaflow"``, ``"anovit"``, ...) of a single-image model; ``ValueError`` for any other."""
    return _info(model).architecture


def model_input_size(model: torch.nn.Module) -> int:
    """Square input side a built single-image model was configured for (``model.model_info``)."""
    return _info(model).input_size


def mean_std(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel input normalisation (mean, std) the registry declares for the model."""
    info = _info(model)
    return info.mean, info.std


def to_input(images: np.ndarray, model: torch.nn.Module, device: str = "cpu") -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) normalised with the model's MEAN/STD, on ``device``."""
    mean, std = mean_std(model)
    images = np.ascontiguousarray(images)
    if not images.flags.writeable:  # decoded images can be read-only views; torch wants writable memory
        images = images.copy()
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return (x - m) / s
