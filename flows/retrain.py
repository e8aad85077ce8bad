"""Scheduled retraining: labelled pairs -> candidate -> same-split comparison with production -> promote or not."""

from __future__ import annotations

import json
import math
import re

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from anodet_core.config import Settings, resolve_device
from anodet_core.inference import bf16_supported
from anodet_core.layout import Store
from anodet_core.retraining import register_and_maybe_promote
from anodet_core.training import Candidate, TrainConfig, train_candidate


@task(name="train-candidate", cache_policy=NONE)
def train_candidate_task(store: Store, depot: str, train_nights: list[str], test_nights: list[str], name: str,
                         preset: str, overrides: dict, cfg: TrainConfig, registration: str) -> Candidate:
    return train_candidate(store, depot, train_nights, test_nights, name=name, arch="anodfdnet", preset=preset,
                           overrides=overrides, cfg=cfg, registration=registration)


@flow(name="retrain", log_prints=False)
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
) -> dict:
    """Train a candidate on the depot's labelled nights except the last ``holdout_nights``, evaluate it and the
    production version on those held-out nights, promote it only if it is better by ``margin``.

    Labels come from the store's labels area (written by the demo generator or by analysts). The comparison is
    a table artifact and is kept in the candidate's card whether it is promoted or not.
    """
    settings = Settings.from_env(store=store)
    st = Store(settings.store, settings.storage_options or None)
    logger = get_run_logger()
    labelled = [n for n in st.nights(depot) if not st.read_labels(depot, n).empty]
    if len(labelled) <= holdout_nights:
        raise ValueError(f"depot {depot!r} has {len(labelled)} labelled nights; need more than {holdout_nights}")
    train_nights, test_nights = labelled[:-holdout_nights], labelled[-holdout_nights:]
    device = resolve_device(settings.device)
    cfg = TrainConfig(epochs=epochs, max_seconds=max_minutes * 60 if max_minutes > 0 else math.inf, lr=lr, seed=seed,
                      device=device, bf16=bf16_supported(device))
    cand = train_candidate_task(st, depot, train_nights, test_nights, model, preset, overrides or {}, cfg, settings.registration)
    promo, cand_m, prod_m = register_and_maybe_promote(st, cand, metric=metric, margin=margin, device=device)
    logger.info("%s:%s %s: %s", promo.name, promo.candidate_version, "promoted" if promo.promoted else "not promoted", promo.reason)
    key = re.sub(r"[^a-z0-9-]+", "-", f"retrain-{promo.name}-{depot}".lower())
    create_table_artifact(promo.rows(cand_m, prod_m), key=key, description=f"{promo.name}:{promo.candidate_version} vs production on {promo.eval_split}: {promo.reason}")
    create_markdown_artifact(f"**{'Promoted' if promo.promoted else 'Not promoted'}** {promo.name}:{promo.candidate_version} — {promo.reason}\n\n```json\n{json.dumps(promo.__dict__, indent=2, default=str)}\n```", key=key + "-decision")
    return promo.__dict__
