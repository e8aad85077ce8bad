"""Model-store use: save a trained single-image model as a new version whose card rebuilds it.

The card rebuilds the model through ``create_model(arch, preset=preset, **overrides)``.  Saving never moves the
``production`` alias: callers decide with :func:`anodet_core.registry.promotion.promote_if_better`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .archs import check_arch

__all__ = ["save_single_image_model"]


def save_single_image_model(
    store: Any,
    name: str,
    arch: str,
    preset: str | None,
    overrides: dict[str, Any] | None,
    model: torch.nn.Module,
    threshold: float,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    *,
    eval_split: str = "",
    data_fingerprint: str = "",
) -> Any:
    """Save a new version (weights + card with ``threshold`` and the normal-score statistics in ``extra``) and
    return its card; the version is not promoted here."""
    from ..registry import model_store

    check_arch(arch)
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    card = model_store.ModelCard(
        name=name, arch=arch, preset=preset, config=dict(overrides or {}), threshold=float(threshold),
        metrics=dict(metrics or {}), eval_split=eval_split, data_fingerprint=data_fingerprint,
        extra=dict(extra or {}),
    )
    return model_store.save_version(store, model, card)
