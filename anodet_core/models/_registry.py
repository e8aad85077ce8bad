"""The model registry (timm-style): ``register_model`` / ``create_model`` / ``list_models``.

Every model module registers a *factory* ``factory(preset: str | None = None, **overrides)
-> nn.Module`` under a name.  Callers (training, inference, benchmarks) then only deal with
strings from config files, and new models (baselines, CSA-Flow, AnoViT, ...) plug in by
decorating a factory and being imported at the bottom of this file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import torch.nn as nn

__all__ = ["register_model", "create_model", "list_models", "list_presets"]

ModelFactory = Callable[..., nn.Module]
_F = TypeVar("_F", bound=ModelFactory)

_REGISTRY: dict[str, ModelFactory] = {}
_PRESETS: dict[str, tuple[str, ...]] = {}


def register_model(name: str, *, presets: Iterable[str] | None = None) -> Callable[[_F], _F]:
    """Decorator registering ``factory(preset=None, **overrides) -> nn.Module`` as ``name``.

    ``presets`` is optional metadata: when given, ``create_model`` rejects unknown presets
    up front (with the valid list) and ``list_presets`` can show them.  Registering the same
    name twice is an error, so two modules can never silently shadow each other.
    """

    def decorator(factory: _F) -> _F:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = factory
        if presets is not None:
            _PRESETS[name] = tuple(presets)
        return factory

    return decorator


def preset_config(label: str, presets: dict, preset: str | None, overrides: dict) -> object:
    """``presets[preset or "paper"]`` with dataclass fields overridden; unknown presets or fields are errors."""
    import dataclasses

    name = preset or "paper"
    if name not in presets:
        raise ValueError(f"unknown {label} preset {name!r}; valid presets: {sorted(presets)}")
    base = presets[name]
    fields = {f.name for f in dataclasses.fields(base)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(f"unknown {label} config fields {bad}; valid fields: {sorted(fields)}")
    return dataclasses.replace(base, **overrides)


def list_models() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(_REGISTRY)


def list_presets(name: str) -> list[str]:
    """Presets declared for ``name`` (empty if the model declared none)."""
    _check_name(name)
    return list(_PRESETS.get(name, ()))


def create_model(name: str, preset: str | None = None, **overrides: object) -> nn.Module:
    """Build registered model ``name`` from ``preset`` (model default if None) plus overrides.

    Raises ValueError, listing the valid choices, for an unknown name or preset.
    """
    _check_name(name)
    valid = _PRESETS.get(name)
    if preset is not None and valid is not None and preset not in valid:
        raise ValueError(f"unknown preset {preset!r} for model {name!r}; valid presets: {list(valid)}")
    return _REGISTRY[name](preset=preset, **overrides)


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models: {list_models()}")
