"""The promotion rule shared by ``anodet train``, ``anodet demo``, the retraining flow and the per-region models.

A candidate version becomes ``production`` when the name has no production version yet, or when its metric on a
held-out split beats production's on the same split by at least ``margin`` (:func:`decide`); an explicit request
(``--promote``) overrides the rule and the reason says so.  :func:`promote_if_better` applies the rule, records
the decision in the candidate's card (``extra["promotion"]``) whether it is promoted or not, and sets the alias.
How the two values are measured is the caller's concern (paired: :mod:`anodet_core.registry.retraining`; single-image:
:mod:`anodet_core.single_image.retraining`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..store.layout import Store
from . import model_store

__all__ = ["MARGIN", "Promotion", "comparison_rows", "decide", "promote_if_better"]

MARGIN: float = 0.01
"""Default margin by which a candidate must beat production (``train`` and ``demo`` use it, ``retrain`` by default)."""


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
        """Table rows (one per model) for a Prefect table artifact or a report (:func:`comparison_rows`)."""
        return comparison_rows(self.name, self.candidate_version, self.production_version, candidate_metrics,
                               production_metrics)


def comparison_rows(name: str, candidate_version: str, production_version: str | None,
                    candidate_metrics: dict[str, float], production_metrics: dict[str, float] | None) -> list[dict[str, Any]]:
    """Paired-model metric table: one row for the candidate, one for production when it was measured."""
    keys = ("precision", "recall", "oa", "f1", "iou", "auc")
    out = [{"model": f"{name}:{candidate_version}", "role": "candidate",
            **{k: round(float(candidate_metrics[k]), 4) for k in keys}}]
    if production_metrics is not None:
        out.append({"model": f"{name}:{production_version}", "role": "production",
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


def promote_if_better(
    store: Store,
    card: model_store.ModelCard,
    candidate_value: float,
    production_version: str | None,
    production_value: float | None,
    *,
    metric: str,
    margin: float,
    eval_split: str,
    force: bool = False,
    details: Mapping[str, Any] | None = None,
) -> Promotion:
    """Decide on the saved candidate ``card`` (:func:`decide`), record it in its card, set the alias if promoted.

    ``production_value`` is production's ``metric`` on the same ``eval_split`` as ``candidate_value`` (None when
    ``production_version`` is None; NaN when it could not be measured).  ``force`` (the user's explicit
    ``--promote``) promotes whatever the rule says, and the reason says so.  The card's ``extra["promotion"]``
    becomes the :class:`Promotion` as a dict plus ``details`` (caller-specific evidence, e.g. a table).
    """
    promoted, reason = decide(candidate_value, production_value, margin)
    if force:
        reason = f"{reason} (--promote given)" if promoted else f"promoted on request (--promote) although {reason}"
        promoted = True
    promo = Promotion(
        name=card.name,
        candidate_version=card.version,
        production_version=production_version,
        metric=metric,
        candidate_value=float(candidate_value),
        production_value=None if production_value is None else float(production_value),
        margin=margin,
        promoted=promoted,
        reason=reason,
        eval_split=eval_split,
        decided_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    card.extra["promotion"] = {**asdict(promo), **(details or {})}
    model_store.update_card(store, card)  # the evidence is on the card before the alias points at it
    if promoted:
        model_store.set_alias(store, card.name, card.version)
    return promo
