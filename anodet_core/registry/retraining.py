"""Paired candidates: save a trained candidate, compare it with production on its test split, promote or not.

Both models are evaluated on the candidate's test pairs (each prepared at the model's own input size) with the
same metric definitions
(:mod:`anodet_core.evaluation.metrics`); the rule itself (:func:`decide`, :func:`promote_if_better`, :class:`Promotion`) is
:mod:`anodet_core.registry.promotion`, re-exported here.
"""

from __future__ import annotations

from ..models import instance_info
from ..store.layout import Store
from ..training import Candidate, evaluate_arrays, prepare_arrays
from . import model_store
from .promotion import MARGIN, Promotion, comparison_rows, decide, promote_if_better

__all__ = ["MARGIN", "Promotion", "comparison_rows", "decide", "promote_if_better", "register_and_maybe_promote"]


def register_and_maybe_promote(
    store: Store,
    cand: Candidate,
    *,
    metric: str = "f1",
    margin: float = MARGIN,
    device: str = "cpu",
    force: bool = False,
) -> tuple[Promotion, dict[str, float], dict[str, float] | None]:
    """Save the candidate as a new immutable version, compare it with production on its test split, promote or not.

    Returns (decision, candidate metrics, production metrics or None).  While no version is promoted, the shipped
    packaged version (what the nights then use) is the production to beat, for ``anodet train``, the retraining
    flow and the demo alike: a trained model never replaces a better shipped one unless the user asks
    (``force``, ``--promote``).  A candidate without a test split has an undefined metric: promoted only when
    there is no production (or with ``force``).
    """
    name = cand.card.name
    test = cand.test if cand.test is not None and len(cand.test) > 0 else None
    # the candidate's card already holds its metrics on this split (same definitions); measure it only if not
    cand_metrics = dict(cand.card.metrics)
    if test is not None and metric not in cand_metrics:
        cand_metrics = evaluate_arrays(cand.model, test, device, no_history_score=cand.card.no_history_score)
    prod_version = model_store.get_alias(store, name)
    if prod_version is None and model_store.packaged_folder(name):
        prod_version = model_store.PACKAGED_VERSION  # what the nights use until a version is promoted
    prod_metrics = None
    if prod_version is not None and test is not None:
        prod_model, prod_card = model_store.load(store, f"{name}:{prod_version}", device)
        prod_test = test
        size = instance_info(prod_model).input_size
        if size != test.cur.shape[1] and cand.test_pairs:  # each model on the same pairs, fed as it is at night
            prod_test = prepare_arrays(store.read_bytes, cand.test_pairs, size=size, registration=cand.registration)
        prod_metrics = evaluate_arrays(prod_model, prod_test, device, no_history_score=prod_card.no_history_score)
    card = model_store.save_version(store, cand.model, cand.card)
    nan = float("nan")
    prod_value = None if prod_version is None else (prod_metrics or {}).get(metric, nan)
    details = {"table": comparison_rows(name, card.version, prod_version, cand_metrics, prod_metrics)} if test is not None else {}
    promo = promote_if_better(store, card, cand_metrics.get(metric, nan), prod_version, prod_value, metric=metric,
                              margin=margin, eval_split=card.eval_split, force=force, details=details)
    return promo, cand_metrics, prod_metrics
