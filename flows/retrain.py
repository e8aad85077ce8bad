"""Scheduled retraining: labelled pairs -> candidate -> same-split comparison with production -> promote or not."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import socket

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from anodet_core.config import Settings, resolve_device
from anodet_core.registry.promotion import Promotion
from anodet_core.registry.retraining import register_and_maybe_promote
from anodet_core.scoring.predictor import bf16_supported
from anodet_core.single_image import RegionRetrain, labelled_captures, retrain_region_model, single_image_regions
from anodet_core.store.layout import Store
from anodet_core.training import TrainConfig, train_candidate
from flows.runners import SettingsTaskRunner, training_placement


def _trained_on(device: str) -> dict[str, str | int]:
    """Where a training task ran (kept in the candidate's card): host, process, device."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "device": device}


def _production_sides(store: Store, model: str) -> tuple[int | None, int | None]:
    """The side ``model``'s promoted production version was trained (and decides) at, and the side it ranks at
    when it has a rank-only map (AnoDFDNet ``rank_scales``, else None); (None, None) while none is promoted."""
    from anodet_core.models import config_input_size
    from anodet_core.models.anodfdnet import decision_side_config
    from anodet_core.registry import model_store

    version = model_store.get_alias(store, model)
    if version is None:
        return None, None
    card = model_store.resolve_card(store, f"{model}:{version}")
    side = config_input_size(card.arch, card.preset, card.config)
    decision = config_input_size(card.arch, card.preset, decision_side_config(card.config))
    return decision, (side if card.config.get("rank_scales") else None)


@task(name="train-candidate", cache_policy=NONE)
def train_and_compare_task(store: Store, depot: str, train_nights: list[str], test_nights: list[str], name: str,
                           preset: str, overrides: dict, cfg: TrainConfig, registration: str, init: str | None,
                           metric: str, margin: float, device_setting: str, input_size: int | None = None,
                           rank_size: int | None = None) -> tuple[Promotion, dict[str, float], dict[str, float] | None]:
    """Prefect task, in a Dask worker (a GPU worker with ANODET_TRAINING_RESOURCES), never the serving process:
    train an ``anodfdnet`` candidate (:func:`anodet_core.training.train_candidate`), save it, compare it with
    production on its held-out split and promote it or not (:func:`register_and_maybe_promote`). Not cached.

    The device is resolved here, on the worker (``device_setting``: auto | cpu | cuda), not where the flow runs.
    """
    device = resolve_device(device_setting)
    cfg = dataclasses.replace(cfg, device=device, bf16=bf16_supported(device))
    cand = train_candidate(store, depot, train_nights, test_nights, name=name, arch="anodfdnet", preset=preset,
                           overrides=overrides, cfg=cfg, registration=registration, init=init, input_size=input_size,
                           rank_size=rank_size)
    if cand.test is None or len(cand.test) == 0:  # the comparison with production needs held-out pairs
        raise ValueError("the candidate has no held-out test split to compare on")
    cand.card.extra["trained_on"] = _trained_on(device)
    return register_and_maybe_promote(store, cand, metric=metric, margin=margin, device=device)


@task(name="train-single-image", cache_policy=NONE)
def train_single_image_task(store: Store, depot: str, region_id: str, train, test, arch: str, overrides: dict,
                            epochs: int, max_seconds: float, seed: int, device_setting: str, margin: float) -> RegionRetrain:
    """Prefect task, in a Dask worker like :func:`train_and_compare_task`:
    :func:`anodet_core.single_image.retrain_region_model` for one region (not cached)."""
    return retrain_region_model(store, depot, region_id, train, test, arch=arch, overrides=overrides, epochs=epochs,
                                max_seconds=max_seconds, seed=seed, device=resolve_device(device_setting), margin=margin)


# training runs as Dask tasks (SettingsTaskRunner, built when a run starts): on the cluster's workers, GPU ones
# with ANODET_TRAINING_RESOURCES, never inside the process that serves the deployments
@flow(name="retrain", task_runner=SettingsTaskRunner(), log_prints=False)  # type: ignore[arg-type]  # see flows.nightly
def retrain(
    depot: str,
    store: str | None = None,
    model: str = "anodfdnet",
    preset: str = "lite",
    overrides: dict | None = None,
    holdout_nights: int = 1,
    epochs: int = 40,
    max_minutes: float = 30.0,
    lr: float = 2e-4,
    seed: int = 0,
    metric: str = "f1",
    margin: float = 0.01,
    single_image: str = "csaflow",
    single_image_epochs: int = 20,
    single_image_overrides: dict | None = None,
    single_image_max_minutes: float = 5.0,
    init: str | None = "base",
    steps: int = 0,
) -> dict:
    """Train a candidate on the depot's labelled nights except the last ``holdout_nights``, evaluate it and the
    production version on those held-out nights, promote it only if it is better by ``margin``.

    ``init``: "base" (default) fine-tunes the shipped pretrained model when there is one for ``model``
    (``preset``/``overrides`` then do not apply), at the input side of the promoted production version when
    there is one (a depot tuned at 448² stays at 448²); None or "none" trains ``preset`` from scratch, anything
    else is a model reference to start from; ``steps`` > 0 bounds training by optimiser steps.

    Labels come from the store's labels area (written by the demo generator or by analysts). The comparison is
    a table artifact and is kept in the candidate's card whether it is promoted or not.

    Then, unless ``single_image`` is "", one single-image model (``<single_image>-<region_id>``, "lite" preset
    with ``single_image_overrides``) per region type with at least 4 normal-labelled captures in the training
    nights, for captures without history; promoted when there is none in production or when its image AUROC on
    the held-out nights' labelled captures of the region beats production's by ``margin``
    (:func:`anodet_core.single_image.retrain_region_model`). Results: key ``single_image`` and a table artifact.
    """
    settings = Settings.from_env(store=store)
    st = Store(settings.store, settings.storage_options or None)
    logger = get_run_logger()
    labelled = [n for n in st.nights(depot) if not st.read_labels(depot, n).empty]
    if len(labelled) <= holdout_nights:
        raise ValueError(f"depot {depot!r} has {len(labelled)} labelled nights; need more than {holdout_nights}")
    train_nights, test_nights = labelled[:-holdout_nights], labelled[-holdout_nights:]
    device = resolve_device(settings.device)
    from anodet_core.registry import model_store

    input_size = rank_size = None
    if init == "base":
        init = f"{model}:{model_store.PACKAGED_VERSION}" if model_store.packaged_folder(model) else None
        input_size, rank_size = _production_sides(st, model) if init else (None, None)
    elif init == "none":
        init = None
    cfg = TrainConfig(epochs=epochs, max_seconds=max_minutes * 60 if max_minutes > 0 else math.inf, lr=lr, seed=seed,
                      device=device, bf16=bf16_supported(device), max_steps=steps,
                      lr_schedule="cosine" if init else "constant", channels_last=bool(init))
    with training_placement(settings):
        trained = train_and_compare_task.submit(st, depot, train_nights, test_nights, model, preset, overrides or {}, cfg,
                                                settings.registration, init, metric, margin, settings.device,
                                                input_size, rank_size)
    promo, cand_m, prod_m = trained.result()
    logger.info("%s:%s %s: %s", promo.name, promo.candidate_version, "promoted" if promo.promoted else "not promoted", promo.reason)
    key = re.sub(r"[^a-z0-9-]+", "-", f"retrain-{promo.name}-{depot}".lower())
    create_table_artifact(promo.rows(cand_m, prod_m), key=key,
                          description=f"{promo.name}:{promo.candidate_version} vs production on {promo.eval_split}: {promo.reason}")
    create_markdown_artifact(f"**{'Promoted' if promo.promoted else 'Not promoted'}** {promo.name}:{promo.candidate_version} — {promo.reason}"
                             f"\n\n```json\n{json.dumps(promo.__dict__, indent=2, default=str)}\n```", key=key + "-decision")
    out = dict(promo.__dict__)
    out["single_image"] = []
    if single_image:
        train_caps = labelled_captures(st, depot, train_nights)
        test_caps = labelled_captures(st, depot, test_nights)
        max_s = single_image_max_minutes * 60 if single_image_max_minutes > 0 else math.inf
        results = []
        with training_placement(settings):
            futures = [train_single_image_task.submit(st, depot, region, train_caps, test_caps, single_image,
                                                      single_image_overrides or {}, single_image_epochs, max_s, seed,
                                                      settings.device, margin)
                       for region in single_image_regions(train_caps)]
        for res in (f.result() for f in futures):
            logger.info("%s:%s %s: %s", res.name, res.candidate_version, "promoted" if res.promoted else "not promoted", res.reason)
            results.append(res)
        out["single_image"] = [r.as_dict() for r in results]
        if results:
            create_table_artifact([r.row() for r in results], key=re.sub(r"[^a-z0-9-]+", "-", f"retrain-{single_image}-{depot}".lower()),
                                  description=f"single-image models ({single_image}) per region of {depot}, image AUROC "
                                              f"on {','.join(test_nights)} vs production")
    return out
