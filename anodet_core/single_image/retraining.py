"""Per-region retraining: train, register and maybe promote the single-image model of each region type.

The retraining flow trains ``<arch>-<region_id>`` on the normal-labelled captures of that region type's
training nights and compares it with production on the held-out nights' labelled captures of the region.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..imaging.io import ImageError
from ..imaging.prepare import prepare_image
from ..registry.promotion import MARGIN, Promotion, promote_if_better
from .archs import config_input_size, model_input_size
from .evaluation import evaluate_single_image
from .fitting import fit_single_image
from .night import single_image_model_name
from .registry import save_single_image_model

__all__ = ["MIN_NORMAL", "labelled_captures", "single_image_regions", "evaluate_against_production", "RegionRetrain",
           "retrain_region_model"]

MIN_NORMAL: int = 4
"""A region type gets a single-image model only with at least this many normal-labelled training captures."""


def labelled_captures(store: Any, depot: str, nights: Sequence[str]) -> Any:
    """Labelled captures of the depot's ``nights``: DataFrame ``capture_id, night, region_id, uri, anomalous``
    (captures without a label row, or with a null label, are left out)."""
    import pandas as pd

    cols = ["capture_id", "night", "region_id", "uri", "anomalous"]
    frames = []
    for night in sorted(nights):
        labels = store.read_labels(depot, night)
        if labels.empty:
            continue
        man = store.read_manifest(depot, night)
        lab = labels[["capture_id", "anomalous"]].dropna(subset=["anomalous"])
        m = man.drop(columns=["night"], errors="ignore").merge(lab, on="capture_id", how="inner")
        m["night"] = night
        frames.append(m[cols])
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=bool if c == "anomalous" else object) for c in cols})
    out = pd.concat(frames, ignore_index=True)
    out["anomalous"] = out["anomalous"].astype(bool)
    return out


def single_image_regions(captures: Any, min_normal: int = MIN_NORMAL) -> list[str]:
    """Region types with at least ``min_normal`` normal-labelled captures in ``captures``, sorted."""
    if captures.empty:
        return []
    counts = captures[~captures["anomalous"]].groupby("region_id").size()
    return sorted(str(r) for r, n in counts.items() if n >= min_normal)


def _read_images(store: Any, uris: Sequence[str], size: int) -> tuple[np.ndarray, int]:
    """Store images prepared like the night does (:func:`prepare_image`); (uint8 (N, size, size, 3), unreadable)."""
    out: list[np.ndarray] = []
    bad = 0
    for uri in uris:
        try:
            out.append(prepare_image(store.read_bytes(uri), size)[0])
        except (OSError, ImageError):  # FileNotFoundError is an OSError
            bad += 1
    return (np.stack(out) if out else np.empty((0, size, size, 3), np.uint8)), bad


def evaluate_against_production(
    store: Any,
    name: str,
    model: torch.nn.Module,
    threshold: float,
    normal: np.ndarray,
    anomalous: np.ndarray,
    *,
    at_size: Callable[[int], tuple[np.ndarray, np.ndarray]],
    device: str = "cpu",
) -> tuple[dict[str, Any] | None, str | None, float | None]:
    """The candidate and ``name``'s production version on the same held-out images, for the promotion rule.

    ``normal`` / ``anomalous``: held-out images (uint8 NHWC) at the candidate's input size; ``at_size(size)``
    gives the same images at another size (a production model with another input size).  Image AUROC needs both
    classes: with one, neither model is evaluated and the values are undefined (NaN, never a win).  Returns
    (candidate :func:`evaluate_single_image` metrics or None, production version or None, production image AUROC:
    None without production, NaN when undefined).
    """
    from types import SimpleNamespace

    from ..registry import model_store

    both = len(normal) > 0 and len(anomalous) > 0
    cand = evaluate_single_image(model, SimpleNamespace(threshold=threshold), normal, anomalous,
                                 device=device) if both else None
    prod_version = model_store.get_alias(store, name)
    prod_value: float | None = None
    if prod_version is not None:
        prod_value = float("nan")
        if both:
            prod_model, prod_card = model_store.load(store, f"{name}:{prod_version}", device)
            psize = model_input_size(prod_model)
            pn, pa = (normal, anomalous) if psize == normal.shape[1] else at_size(psize)
            prod_value = float(evaluate_single_image(prod_model, prod_card, pn, pa, device=device)["image_auroc"])
    return cand, prod_version, prod_value


@dataclass
class RegionRetrain:
    """Outcome of :func:`retrain_region_model` for one region type: the :class:`Promotion` decision and the
    region's counts (``as_dict()`` for JSON, ``row()`` for a table)."""

    region_id: str
    promotion: Promotion  # metric "image_auroc" on the held-out nights' labelled captures of the region
    threshold: float
    n_train_normal: int
    n_test_normal: int
    n_test_anomalous: int
    n_unreadable: int
    epochs_run: int
    train_seconds: float

    @property
    def name(self) -> str:
        """Registry name, ``<arch>-<region_id>``."""
        return self.promotion.name

    @property
    def candidate_version(self) -> str:
        """The version saved for the candidate."""
        return self.promotion.candidate_version

    @property
    def production_version(self) -> str | None:
        """Production before the decision (None: there was none)."""
        return self.promotion.production_version

    @property
    def promoted(self) -> bool:
        """Whether the candidate became production."""
        return self.promotion.promoted

    @property
    def reason(self) -> str:
        """Why it was promoted or not."""
        return self.promotion.reason

    @property
    def metric(self) -> str:
        """The compared metric (``image_auroc``)."""
        return self.promotion.metric

    @property
    def candidate_value(self) -> float:
        """Candidate image AUROC (NaN: one class held out)."""
        return self.promotion.candidate_value

    @property
    def production_value(self) -> float | None:
        """Production image AUROC on the same captures (None: no production)."""
        return self.promotion.production_value

    @property
    def margin(self) -> float:
        """Margin the candidate had to beat production by."""
        return self.promotion.margin

    @property
    def eval_split(self) -> str:
        """The held-out captures both models were compared on."""
        return self.promotion.eval_split

    def as_dict(self) -> dict[str, Any]:
        """The outcome as one flat JSON-friendly dict (the retraining flow's ``single_image`` entries)."""
        keys = ("region_id", "name", "candidate_version", "production_version", "promoted", "reason", "metric",
                "candidate_value", "production_value", "margin", "threshold", "n_train_normal", "n_test_normal",
                "n_test_anomalous", "n_unreadable", "epochs_run", "train_seconds", "eval_split")
        return {k: getattr(self, k) for k in keys}

    def row(self) -> dict[str, Any]:
        """The outcome as one table row (AUROCs rounded to 4 digits, None when undefined)."""
        def r(v: float | None) -> float | None:
            return None if v is None or not math.isfinite(v) else round(float(v), 4)

        return {
            "region": self.region_id, "model": f"{self.name}:{self.candidate_version}",
            "production_before": self.production_version or "", "promoted": self.promoted,
            "candidate_auroc": r(self.candidate_value), "production_auroc": r(self.production_value),
            "n_train_normal": self.n_train_normal, "n_test_normal": self.n_test_normal,
            "n_test_anomalous": self.n_test_anomalous, "reason": self.reason,
        }


def retrain_region_model(
    store: Any,
    depot: str,
    region_id: str,
    train: Any,
    test: Any,
    *,
    arch: str = "csaflow",
    preset: str | None = "lite",
    overrides: dict[str, Any] | None = None,
    epochs: int = 20,
    max_seconds: float = float("inf"),
    seed: int = 0,
    device: str = "cpu",
    margin: float = MARGIN,
    min_normal: int = MIN_NORMAL,
) -> RegionRetrain:
    """Train, register and maybe promote the single-image model of one region type.

    ``train`` / ``test``: :func:`labelled_captures` of the training / held-out nights (all regions).  The
    candidate is :func:`fit_single_image` on the region's normal training captures (threshold and normal map
    statistics from its own held-out 20 %).  Promotion follows :func:`anodet_core.registry.promotion.promote_if_better`:
    when ``<arch>-<region_id>`` has no production version, or when the candidate's image AUROC on the held-out
    nights' labelled captures of the region (both classes needed, else undefined and never a win) beats
    production's on the same captures by ``margin`` (:func:`evaluate_against_production`).  The version is saved
    either way; the comparison goes to its card (``extra["promotion"]``).
    """
    overrides = dict(overrides or {})
    name = single_image_model_name(arch, region_id)
    size = config_input_size(arch, preset, overrides)
    tr = train[(train["region_id"] == region_id) & ~train["anomalous"]]
    normal, bad = _read_images(store, tr["uri"].tolist(), size)
    if len(normal) < min_normal:
        raise ValueError(f"region {region_id!r} of {depot!r} has {len(normal)} readable normal training captures; "
                         f"need {min_normal}")
    fit = fit_single_image(arch, normal, preset=preset, overrides=overrides, epochs=epochs, max_seconds=max_seconds,
                           seed=seed, device=device)
    te = test[test["region_id"] == region_id]
    te_uris = (te.loc[~te["anomalous"], "uri"].tolist(), te.loc[te["anomalous"], "uri"].tolist())

    def held_out(sz: int) -> tuple[np.ndarray, np.ndarray, int]:
        (n, b1), (a, b2) = _read_images(store, te_uris[0], sz), _read_images(store, te_uris[1], sz)
        return n, a, b1 + b2

    te_norm, te_anom, bad_te = held_out(size)
    cand, prod_version, prod_value = evaluate_against_production(
        store, name, fit.model, fit.threshold, te_norm, te_anom, at_size=lambda sz: held_out(sz)[:2], device=device)
    test_nights = sorted(set(te["night"])) if len(te) else []
    train_nights = sorted(set(tr["night"]))
    test_split = f"{depot}:{','.join(test_nights)} region {region_id} ({len(te_norm)} normal, {len(te_anom)} anomalous)"
    eval_split = (f"threshold: {fit.n_val} held-out normal captures of region {region_id} in "
                  f"{depot}:{','.join(train_nights)}; image metrics: {test_split}")
    metrics = dict(fit.metrics)
    if cand:
        metrics.update({k: cand[k] for k in ("image_auroc", "recall", "false_alarms", "false_alarm_rate",
                                             "n_normal", "n_anomalous")})
    extra = {**fit.extra, "depot": depot, "region_id": region_id, "train_nights": train_nights,
             "test_nights": test_nights}
    card = save_single_image_model(store, name, arch, preset, overrides, fit.model, fit.threshold, metrics, extra,
                                   eval_split=eval_split, data_fingerprint=fit.data_fingerprint)
    counts: dict[str, Any] = {
        "region_id": str(region_id), "threshold": fit.threshold, "n_train_normal": len(normal),
        "n_test_normal": len(te_norm), "n_test_anomalous": len(te_anom), "n_unreadable": bad + bad_te,
        "epochs_run": len(fit.history), "train_seconds": round(fit.seconds, 3),
    }
    cand_value = float(cand["image_auroc"]) if cand else float("nan")
    promo = promote_if_better(store, card, cand_value, prod_version, prod_value, metric="image_auroc", margin=margin,
                              eval_split=test_split, details=counts)
    return RegionRetrain(promotion=promo, **counts)
