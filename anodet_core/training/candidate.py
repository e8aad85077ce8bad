"""A training candidate from a store: a depot's labelled nights to a trained, calibrated, unsaved model and its card."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from ..store.layout import Store
from .config import TrainConfig, TrainResult
from .data import LabelledPair, PairArrays, prepare_arrays, split_last_group, store_pairs
from .evaluate import evaluate_arrays
from .loop import train_pairs

if TYPE_CHECKING:
    from ..scoring.calibration import Calibration

# validation image AUROC a rank-only map at a larger side must add to be kept (validation nights are small)
RANK_GAIN = 0.02


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
    from ..models.anodfdnet import decision_side_config
    from ..registry.model_store import build, resolve

    weights, card = resolve(store, init)
    config = {**decision_side_config(card.config), **_size_override(card.arch, input_size)}
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
    rank_size: int | None = None,
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
    ``rank_size`` (AnoDFDNet, larger than the training side): also try feeding pairs prepared at that side, the
    decision map computed at the training side and a rank-only map at the full side (``decide_scale`` /
    ``rank_scales``); kept, recalibrated at that side, when validation captures rank better by ``RANK_GAIN``
    image AUROC. It changes no decision at 0.5, so the pixel figures stay those of the training side.
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
    rank_choice: dict[str, Any] | None = None
    if rank_size and cal is not None and rank_size != size:
        rank_choice, cal = _try_rank_size(model, [pairs[i] for i in va], val, cal, size, rank_size, cfg.device,
                                          store, registration, progress)
        if rank_choice["kept"]:
            overrides = {**overrides, **_size_override(arch, rank_size), "decide_scale": size / rank_size,
                         "rank_scales": [1.0]}
            size = rank_size
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
            "rank_size": rank_choice,
        },
    )
    return Candidate(model, card, result, test, list(test_pairs), registration)


def _try_rank_size(model: torch.nn.Module, val_pairs: list[LabelledPair], val: PairArrays, cal: Calibration,
                   size: int, rank_size: int, device: str, store: Store, registration: str,
                   progress: bool) -> tuple[dict[str, Any], Calibration]:
    """Validation capture AUROC at the training side against the pairs at ``rank_size`` with a rank-only map there;
    the model is left configured (and ``cal`` replaced) as the better one says. Returns (the record, calibration)."""
    import dataclasses

    from ..models import instance_info
    from ..models.anodfdnet import AnoDFDNet
    from ..scoring.calibration import calibrate, capture_auroc

    if not isinstance(model, AnoDFDNet):
        raise ValueError(f"--rank-size needs an AnoDFDNet model, got {type(model).__name__}")
    if rank_size < size or rank_size % 16:
        raise ValueError(f"rank size {rank_size} must be a multiple of 16 above the training side {size}")
    before = capture_auroc(model, val, cal, device)
    mcfg, info = model.cfg, instance_info(model)
    model.cfg = dataclasses.replace(mcfg, img_size=rank_size, decide_scale=size / rank_size, rank_scales=(1.0,))
    model.model_info = dataclasses.replace(info, input_size=rank_size)  # type: ignore[assignment]  # as create_model
    val_r = prepare_arrays(store.read_bytes, val_pairs, size=rank_size, registration=registration, progress=progress)
    cal_r = calibrate(model, val_r, device)
    after = capture_auroc(model, val_r, cal_r, device)
    kept = bool(after >= before + RANK_GAIN)
    if not kept:
        model.cfg, model.model_info = mcfg, info  # type: ignore[assignment]
    record = {"size": rank_size, "val_capture_auroc": round(before, 4), "val_capture_auroc_ranked": round(after, 4),
              "kept": kept}
    return record, cal_r if kept else cal
