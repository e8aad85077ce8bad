"""A training candidate from a store: a depot's labelled nights to a trained, calibrated, unsaved model and its card."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..store.layout import Store
from .config import TrainConfig, TrainResult
from .data import LabelledPair, PairArrays, prepare_arrays, split_last_group, store_pairs
from .evaluate import evaluate_arrays
from .loop import train_pairs


@dataclass
class Candidate:
    """An unsaved trained model: the module, its card (test metrics, calibration), the training result and the
    prepared test pairs (None without test nights)."""

    model: torch.nn.Module
    card: Any  # model_store.ModelCard (not yet saved: version empty)
    result: TrainResult
    test: PairArrays | None
    # the labelled test pairs behind ``test`` and how they were registered: a production model fed at another
    # input size is compared on the same pairs prepared at its own size
    test_pairs: list[LabelledPair] = field(default_factory=list)
    registration: str = "auto"


def _size_override(arch: str, input_size: int | None) -> dict[str, int]:
    """The config override that feeds ``arch`` at ``input_size`` (its registered ``size_field``); {} for None."""
    from ..models import model_info

    if input_size is None:
        return {}
    field_name = model_info(arch).size_field
    if not field_name:
        raise ValueError(f"{arch} has a fixed input size; --input-size does not apply to it")
    return {field_name: int(input_size)}


def _fine_tune_start(store: Store, init: str, input_size: int | None) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """The model ``init`` names, its card and the config it is built with: the card's, fed at ``input_size`` when
    given (the same weights; refused when they are tied to their side, e.g. a position embedding)."""
    from ..registry.model_store import build, resolve

    weights, card = resolve(store, init)
    config = {**card.config, **_size_override(card.arch, input_size)}
    try:
        model = build(replace(card, config=config), weights)
    except RuntimeError as exc:  # a tensor whose shape depends on the side
        raise ValueError(f"{init} cannot be fed at {input_size} px: its weights are tied to its input size "
                         f"(a position embedding); train it from scratch at that size instead") from exc
    return model, card, config


def train_candidate(
    store: Store,
    depot: str,
    train_nights: Sequence[str],
    test_nights: Sequence[str],
    *,
    name: str = "anodfdnet",
    arch: str = "anodfdnet",
    preset: str | None = "lite",
    overrides: dict[str, Any] | None = None,
    cfg: TrainConfig | None = None,
    registration: str = "auto",
    progress: bool = False,
    init: str | None = None,
    input_size: int | None = None,
) -> Candidate:
    """Train a model on the labelled pairs of ``train_nights`` (the latest of them validates: best val F1 and the
    operating point; one night: a seeded 8:2 split) and measure it on ``test_nights``; returns an unsaved candidate
    whose card carries the test metrics.

    ``init`` (a model reference, e.g. ``anodfdnet:base``, the shipped pretrained model) fine-tunes that model
    instead of training ``arch``/``preset`` from scratch: its architecture, preset and config are kept. The
    operating point (threshold, minimum finding area) is calibrated on the validation split either way.
    ``input_size``: the side pairs are prepared at and the model is fed (a multiple of 16; default: the starting
    model's, else the preset's), kept in the card's config (``img_size``) so the night, ``predict`` and
    ``evaluate`` feed the model as it was trained: large captures keep small changes visible at a larger side.
    """
    from ..models import create_model, instance_info
    from ..registry.model_store import ModelCard
    from ..scoring.calibration import calibrate

    cfg = cfg or TrainConfig()
    pairs = store_pairs(store, depot, train_nights)
    if len(pairs) < 2:
        raise ValueError(f"need at least 2 labelled pairs in {depot} nights {list(train_nights)}, found {len(pairs)}")
    init_card = None
    # ``overrides``: the config the model is built with, recorded in the card (with the side it is fed at)
    if init:
        model, init_card, overrides = _fine_tune_start(store, init, input_size)
        arch, preset = init_card.arch, init_card.preset
    else:
        overrides = {**(overrides or {}), **_size_override(arch, input_size)}
        model = create_model(arch, preset=preset, **overrides)
    size = instance_info(model).input_size
    data = prepare_arrays(store.read_bytes, pairs, size=size, registration=registration, progress=progress)
    tr, va = split_last_group(len(data), data.groups, 0.2, cfg.seed)  # the latest training night validates
    val = data.subset(va)
    # a fine-tune keeps its starting weights when no epoch beats them on validation
    result = train_pairs(model, data.subset(tr), val, cfg, progress=progress, start_is_candidate=init is not None)
    cal = calibrate(model, val, cfg.device) if len(val) else None
    threshold = cal.threshold if cal else result.threshold
    test = None
    metrics: dict[str, Any] = {}
    split = ""
    test_pairs = store_pairs(store, depot, test_nights) if test_nights else []
    if test_pairs:
        test = prepare_arrays(store.read_bytes, test_pairs, size=size, registration=registration, progress=progress)
        level = cal.no_history_score if cal else None
        metrics = evaluate_arrays(model, test, cfg.device, no_history_score=level)
        at_op = evaluate_arrays(model, test, cfg.device, threshold=threshold, no_history_score=level)
        metrics.update({f"{k}_at_threshold": at_op[k] for k in ("precision", "recall", "f1", "iou")})
        split = f"{depot}:{','.join(sorted(test_nights))}"
    card = ModelCard(
        name=name,
        arch=arch,
        preset=preset,
        config={**overrides, **(cal.config() if cal else {})},  # + the calibrated map temperature
        metrics=metrics,
        threshold=threshold,
        min_finding_area=cal.min_finding_area if cal else None,
        no_history_score=cal.no_history_score if cal else None,
        eval_split=split,
        data_fingerprint=data.fingerprint(),
        extra={
            "train_nights": sorted(train_nights),
            "n_train": len(tr),
            "n_val": len(va),
            "n_test": len(test_pairs),
            "best_epoch": result.best_epoch,
            "best_val": result.best_val,
            "train_seconds": round(result.seconds, 1),
            "steps": sum(int(h.get("steps", 0)) for h in result.history),
            "train_config": {k: v for k, v in cfg.__dict__.items() if k != "max_seconds" or math.isfinite(v)},
            "init": None if init_card is None else {"ref": init, "version": init_card.version,
                                                     "data_fingerprint": init_card.data_fingerprint},
            "calibration": None if cal is None else cal.__dict__,
        },
    )
    return Candidate(model, card, result, test, list(test_pairs), registration)
