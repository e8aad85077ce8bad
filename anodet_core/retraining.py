"""Promotion rule: a candidate replaces production only with evidence on the same held-out split.

Both models are evaluated on the same prepared test pairs with the same metric definitions
(:mod:`anodet_core.metrics`). The candidate is promoted when there is no production version yet, or when its
metric beats production's by at least ``margin``. The comparison is stored in the candidate's card either way.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from . import model_store
from .layout import Store
from .training import Candidate, evaluate_arrays


@dataclass
class Promotion:
    """The promotion decision for one candidate version, with the metric values it was based on."""

    name: str
    candidate_version: str
    production_version: str | None  # before the decision
    metric: str
    candidate_value: float
    production_value: float | None
    margin: float
    promoted: bool
    reason: str
    eval_split: str
    decided_at: str

    def rows(self, candidate_metrics: dict[str, float], production_metrics: dict[str, float] | None) -> list[dict[str, Any]]:
        """Table rows (one per model) for a Prefect table artifact or a report."""
        keys = ("precision", "recall", "oa", "f1", "iou", "auc")
        out = [{"model": f"{self.name}:{self.candidate_version}", "role": "candidate",
                **{k: round(float(candidate_metrics[k]), 4) for k in keys}}]
        if production_metrics is not None:
            out.append({"model": f"{self.name}:{self.production_version}", "role": "production",
                        **{k: round(float(production_metrics[k]), 4) for k in keys}})
        return out


def decide(candidate_value: float, production_value: float | None, margin: float) -> tuple[bool, str]:
    """(promote?, reason): yes without production, else only when the candidate is at least ``margin`` better.

    A NaN candidate value never wins.
    """
    if production_value is None:
        return True, "no production version yet"
    if candidate_value != candidate_value:  # NaN never wins
        return False, "candidate metric is undefined"
    if candidate_value >= production_value + margin:
        return True, f"candidate beats production by {candidate_value - production_value:+.4f} (margin {margin})"
    return False, f"candidate {candidate_value:.4f} is not better than production {production_value:.4f} by {margin}"


def register_and_maybe_promote(
    store: Store, cand: Candidate, *, metric: str = "f1", margin: float = 0.01, device: str = "cpu"
) -> tuple[Promotion, dict[str, float], dict[str, float] | None]:
    """Save the candidate as a new immutable version, compare it with production on its test split, promote or not."""
    if cand.test is None or len(cand.test) == 0:
        raise ValueError("the candidate has no held-out test split to compare on")
    name = cand.card.name
    # the candidate's card already holds its metrics on this split (same definitions); measure it only if not
    cand_metrics = cand.card.metrics if metric in cand.card.metrics else evaluate_arrays(cand.model, cand.test, device)
    prod_version = model_store.get_alias(store, name)
    prod_metrics = None
    if prod_version is None and model_store.packaged_folder(name):
        prod_version = model_store.PACKAGED_VERSION  # what the nights use until a version is promoted
    if prod_version is not None:
        prod_model, _ = model_store.load(store, f"{name}:{prod_version}", device)
        prod_metrics = evaluate_arrays(prod_model, cand.test, device)
    card = model_store.save_version(store, cand.model, cand.card)
    promoted, reason = decide(cand_metrics[metric], None if prod_metrics is None else prod_metrics[metric], margin)
    promo = Promotion(
        name=name,
        candidate_version=card.version,
        production_version=prod_version,
        metric=metric,
        candidate_value=float(cand_metrics[metric]),
        production_value=None if prod_metrics is None else float(prod_metrics[metric]),
        margin=margin,
        promoted=promoted,
        reason=reason,
        eval_split=card.eval_split,
        decided_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    card.extra["promotion"] = {**asdict(promo), "table": promo.rows(cand_metrics, prod_metrics)}
    model_store.update_card(store, card)
    if promoted:
        model_store.set_alias(store, name, card.version)
    return promo, cand_metrics, prod_metrics
