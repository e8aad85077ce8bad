"""The model registry (timm-style): ``register_model`` / ``create_model`` / ``list_models`` / ``model_info``.

Every model module registers a *factory* ``factory(preset: str | None = None, **overrides)
-> nn.Module`` under a name, with a :class:`ModelInfo` (timm's ``pretrained_cfg``): what kind of
model it is (paired change detector or single-image anomaly model), its input size, the input
normalisation and what its score means.  Callers (preprocessing, inference, the night, training,
benchmarks) only deal with names from config files and cards and read everything else from here;
``create_model`` attaches the instance's info as ``model.model_info`` (the input size of the preset
actually built), as timm attaches ``pretrained_cfg``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

import torch.nn as nn

__all__ = ["ModelKind", "ModelInfo", "PAIRED_INFO", "register_model", "create_model", "model_info", "instance_info",
           "model_config", "config_input_size", "list_models", "list_presets", "preset_config", "single_image_models"]

ModelFactory = Callable[..., nn.Module]
_F = TypeVar("_F", bound=ModelFactory)


class ModelKind(StrEnum):
    """What a model consumes: an aligned (cur, his) pair, or cur alone."""

    PAIRED = "paired"
    SINGLE_IMAGE = "single_image"


@dataclass(frozen=True)
class ModelInfo:
    """A registered model's metadata (timm's ``pretrained_cfg``), read by preprocessing, inference and the night.

    ``input_size`` is the square side the model is fed (``size_field`` names the config field that overrides it
    per preset); ``mean``/``std`` normalise [0, 1] RGB input; ``score`` says what the map holds: ``probability``
    (a sigmoid change score, thresholded as is; AnoDFDNet's is ``sigmoid(logit / map_temperature)``, 0.5 at
    logit 0), ``nll`` (flow negative log-likelihood) or ``reconstruction`` (reconstruction error) — the last two
    are normalised per region by calibration on normal images.
    """

    kind: ModelKind
    input_size: int = 256
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    score: str = "probability"
    size_field: str | None = None
    architecture: str = ""  # the registered name; filled in by register_model


PAIRED_INFO = ModelInfo(ModelKind.PAIRED)  # the paper's: 256x256, mean = std = 0.5, sigmoid map

_REGISTRY: dict[str, ModelFactory] = {}
_PRESETS: dict[str, tuple[str, ...]] = {}
_INFO: dict[str, ModelInfo] = {}
_CONFIGS: dict[str, tuple[str, dict]] = {}  # name -> (label, preset configs), when presets is a dict of configs


def register_model(name: str, *, presets: Iterable[str] | None = None,
                   info: ModelInfo = PAIRED_INFO) -> Callable[[_F], _F]:
    """Decorator registering ``factory(preset=None, **overrides) -> nn.Module`` as ``name`` with its ``info``.

    ``presets`` is optional metadata: when given, ``create_model`` rejects unknown presets
    up front (with the valid list) and ``list_presets`` can show them.  Registering the same
    name twice is an error, so two modules can never silently shadow each other.
    """

    def decorator(factory: _F) -> _F:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = factory
        _INFO[name] = dataclasses.replace(info, architecture=name)
        if presets is not None:
            _PRESETS[name] = tuple(presets)
            if isinstance(presets, dict):
                _CONFIGS[name] = (name, presets)
        return factory

    return decorator


def model_info(name: str) -> ModelInfo:
    """The registered :class:`ModelInfo` of ``name`` (its default input size; an instance's is ``model.model_info``)."""
    _check_name(name)
    return _INFO[name]


def model_config(name: str, preset: str | None = None, overrides: dict | None = None) -> object:
    """The dataclass config ``create_model(name, preset, **overrides)`` builds from (validated, nothing built)."""
    _check_name(name)
    if name not in _CONFIGS:
        raise ValueError(f"model {name!r} registered no preset configs")
    label, presets = _CONFIGS[name]
    return preset_config(label, presets, preset, dict(overrides or {}))


def config_input_size(name: str, preset: str | None = None, overrides: dict | None = None) -> int:
    """Square input side of ``name`` built from ``preset`` + ``overrides`` (its info's ``size_field``)."""
    info = model_info(name)
    if not info.size_field:
        return info.input_size
    return int(getattr(model_config(name, preset, overrides), info.size_field))


def single_image_models() -> list[str]:
    """Sorted names of the registered single-image models (the one list; the CLI's choices come from it)."""
    return sorted(n for n, i in _INFO.items() if i.kind is ModelKind.SINGLE_IMAGE)


def instance_info(model: nn.Module) -> ModelInfo:
    """``model.model_info`` when the model came from :func:`create_model`; the paper's paired info otherwise."""
    info = getattr(model, "model_info", None)
    return info if isinstance(info, ModelInfo) else PAIRED_INFO


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
    model = _REGISTRY[name](preset=preset, **overrides)
    info = _INFO[name]
    cfg = getattr(model, "cfg", None)
    if info.size_field and cfg is not None:
        info = dataclasses.replace(info, input_size=int(getattr(cfg, info.size_field)))
    model.model_info = info  # type: ignore[assignment]  # as timm sets model.pretrained_cfg
    return model


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models: {list_models()}")
