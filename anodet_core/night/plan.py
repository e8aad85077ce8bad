"""A night's run without the orchestration: plan, report, summarise. The Prefect flow composes these."""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..registry.model_store import get_alias, read_card, resolve_card
from ..scoring.postprocess import DEFAULT_MIN_AREA, OperatingPoint, resolve_operating_point
from ..store.layout import Store
from ..store.maps import create_night_maps
from ..store.names import check_name, check_night
from ..store.publish import NightCommit, latest_maps_rel, new_generation, publish_night
from ..store.schemas import (
    CAPTURE_REPORT_SCHEMA,
    DECISION_ANOMALOUS,
    FINDING_REPORT_SCHEMA,
    CaptureRow,
    FindingRow,
    row_dict,
    table_from_rows,
)
from ..text import printable
from .history import PairJob, resolve_histories

log = logging.getLogger(__name__)


@dataclass
class NightPlan:
    """Everything pinned before a night is scored: model version, operating point, pair jobs and map group."""

    depot: str
    night: str
    model_ref: str  # pinned NAME:VERSION, so every batch of the night uses the same weights
    model_name: str
    model_version: str
    threshold: float  # with min_finding_area: the night's operating point, pinned like the model version
    jobs: list[PairJob]
    maps_url: str
    # region_id -> pinned single-image NAME:VERSION, for regions with no-history jobs, or all regions when second
    # opinions are on (see pin_single_image_models)
    single_models: dict[str, str] = field(default_factory=dict)
    min_finding_area: int = DEFAULT_MIN_AREA  # native px
    # this run's generation of the night and its (store-relative) map group: published by write_reports
    generation: str = ""
    maps_rel: str = ""
    no_history_score: float | None = None  # the pinned card's (anodet_core.scoring.postprocess.weigh_missing_history)

    @property
    def operating_point(self) -> OperatingPoint:
        """The night's pinned threshold, minimum finding area (native px) and no-history score."""
        return OperatingPoint(self.threshold, self.min_finding_area, self.no_history_score)


def plan_night(
    store: Store,
    depot: str,
    night: str,
    model: str,
    map_dtype: str = "uint8",
    run_id: str = "",
    threshold: float | None = None,
    *,
    min_finding_area: int | None = None,
    single_image: str = "",
    second_opinion: bool = False,
    allowed_uri_prefixes: Sequence[str] = (),
) -> NightPlan:
    """Read the manifest, resolve histories, pin the model version and create the night's (empty) map group.

    The manifest is checked once (:meth:`anodet_core.store.layout.Store.check_manifest`, uris against
    ``allowed_uri_prefixes``, ANODET_ALLOWED_URI_PREFIXES): a manifest that cannot be read as a table stops the
    night (FileNotFoundError, ManifestError); an invalid row does not: its job carries the reason
    (:attr:`PairJob.invalid`, reported ``invalid_manifest``) and keeps its map slot, sized 0 x 0 and never
    written, while the other rows are planned as usual.

    The operating point is pinned for the whole night (:func:`anodet_core.scoring.postprocess.resolve_operating_point`):
    the threshold is the model card's unless one is given (ANODET_THRESHOLD), the minimum finding area the
    given one (ANODET_MIN_FINDING_AREA), else the card's, else 64 native px; both go into the map group's
    attributes. With ``single_image`` (an arch, ANODET_SINGLE_IMAGE), the production single-image models of the
    regions that have captures without history are pinned too (``NightPlan.single_models``); with
    ``second_opinion`` those of every region of the night.
    """
    depot, night = check_name(depot, "depot"), check_night(night)
    manifest = store.check_manifest(depot, night, allowed_uri_prefixes)
    card = resolve_card(store, model)
    op = resolve_operating_point(card, threshold, min_finding_area)
    jobs = resolve_histories(store, manifest.rows, depot, night, manifest.invalid, allowed_uri_prefixes=allowed_uri_prefixes)
    for job in jobs:
        if job.invalid:
            log.warning("manifest %s/%s row %d is not scored: %s", depot, night, job.index, printable(job.invalid))
    valid = [j for j in jobs if not j.invalid]
    single_models = pin_single_image_models(store, valid, single_image, all_regions=second_opinion)
    # an invalid row keeps its slot (its job's index), empty: no id (it may be hostile, or repeat a valid one)
    sizes = [(0, 0) if j.invalid else (int(j.capture["width"]), int(j.capture["height"])) for j in jobs]
    generation = new_generation()
    url = create_night_maps(
        store,
        depot,
        night,
        ["" if j.invalid else j.capture["capture_id"] for j in jobs],
        sizes,
        dtype=map_dtype,
        generation=generation,
        attrs={"model_name": card.name, "model_version": card.version, "threshold": op.threshold,
               "min_finding_area": op.min_area, "no_history_score": op.no_history_score, "run_id": run_id, "single_models": single_models},
    )
    pinned = model if os.path.exists(model) else f"{card.name}:{card.version}"
    return NightPlan(depot, night, pinned, card.name, card.version, op.threshold, jobs, url, single_models, op.min_area,
                     generation, store.maps_rel(depot, night, generation), op.no_history_score)


def pin_single_image_models(store: Store, jobs: list[PairJob], single_image: str, *, all_regions: bool = False) -> dict[str, str]:
    """``{region_id: "NAME:VERSION"}``: the production version of ``<single_image>-<region_id>`` for every region
    with a job without history (``all_regions``: every region of the jobs, for second opinions), where that
    model exists. Empty when ``single_image`` is "" (disabled).

    A production card that is not a single-image model or lacks the normal map statistics the night normalises
    with is skipped (logged): its captures stay ``no_history`` rather than failing the night.
    """
    if not single_image:
        return {}
    from ..single_image import ARCHS, map_scale, single_image_model_name

    if single_image not in ARCHS:
        raise ValueError(f"unknown single-image model {single_image!r} (ANODET_SINGLE_IMAGE): use one of {list(ARCHS)} or ''")
    pinned: dict[str, str] = {}
    for region in sorted({str(j.capture["region_id"]) for j in jobs if all_regions or not j.history_uri}):
        try:
            name = single_image_model_name(single_image, region)
        except ValueError:
            continue  # a region id that cannot be a model name has no model
        version = get_alias(store, name)
        if version is None:
            continue
        try:
            card = read_card(store, name, version)
            if card.arch not in ARCHS:
                raise ValueError(f"arch {card.arch!r} is not a single-image model")
            map_scale(card)
        except (OSError, ValueError) as exc:
            log.warning("single-image model %s:%s not used for region %s: %s", name, version, printable(region),
                        printable(exc))
            continue
        pinned[region] = f"{name}:{version}"
    return pinned


def split_jobs(jobs: list[PairJob], batch_size: int) -> list[list[PairJob]]:
    """Consecutive chunks of at most ``batch_size`` jobs, in order; ValueError when ``batch_size`` < 1."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    return [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]


def write_reports(store: Store, depot: str, night: str, captures: list[CaptureRow], findings: list[FindingRow], *,
                  generation: str | None = None, maps_rel: str | None = None, run_id: str = "") -> dict[str, str]:
    """Publish the night: both report tables and its map group become visible in one step
    (:func:`anodet_core.store.publish.publish_night`); returns the report files' URLs.

    Captures are sorted by map row and findings by (capture, finding) for stable output. ``generation`` and
    ``maps_rel`` are the plan's (:attr:`NightPlan.generation`, :attr:`NightPlan.maps_rel`); without them a new
    generation with the night's newest map group.
    """
    captures = sorted(captures, key=lambda r: r.map_index if r.map_index is not None else -1)
    findings = sorted(findings, key=lambda r: (r.capture_id, r.finding_id))
    tables = {"captures": table_from_rows(captures, CAPTURE_REPORT_SCHEMA),
              "findings": table_from_rows(findings, FINDING_REPORT_SCHEMA)}
    maps_rel = maps_rel or latest_maps_rel(store, depot, night)
    if generation is None and maps_rel.startswith(store.maps_generations_rel(depot, night) + "/"):
        generation = posixpath.basename(maps_rel).removesuffix(".zarr")  # the run that wrote those maps
    commit: NightCommit = publish_night(store, depot, night, tables, generation=generation, maps_rel=maps_rel, run_id=run_id)
    return {t: store.url(rel) for t, rel in commit.files.items()}


@dataclass
class NightSummary:
    """Outcome of a night: counts by status, anomalous captures, top captures by score, timing and output URLs."""

    depot: str
    night: str
    model: str
    n_captures: int
    by_status: dict[str, int]
    n_anomalous: int
    top: list[dict[str, Any]] = field(default_factory=list)  # highest capture score first
    seconds: float = 0.0
    reports: dict[str, str] = field(default_factory=dict)
    maps_url: str = ""
    image_auroc: float | None = None  # only when ground-truth labels exist for the night
    page_url: str = ""  # the night's HTML page (anodet_core.reporting), when written

    def markdown(self, top_n: int = 15) -> str:
        """A Markdown report: the counts, wall time, image AUROC when labelled, and the ``top_n`` highest-scoring captures.

        Every value from outside (ids, statuses, URLs) is escaped (:func:`_md`): no control character reaches a
        terminal or a renderer, and no '|' splits a table cell.
        """
        lines = [
            f"# Night {_md(self.night)} at depot {_md(self.depot)}",
            "",
            f"- model: `{_md(self.model)}`",
            f"- captures: {self.n_captures} ({', '.join(f'{_md(k)}: {v}' for k, v in sorted(self.by_status.items()))})",
            f"- anomalous: {self.n_anomalous}",
            f"- wall time: {self.seconds:.1f} s ({self.n_captures / max(self.seconds, 1e-9):.2f} captures/s)",
        ]
        if self.image_auroc is not None:
            lines.append(f"- image AUROC against the night's labels: {self.image_auroc:.3f}")
        if self.page_url:
            url = self.page_url if "://" in self.page_url else f"file://{self.page_url}"
            lines.append(f"- night report (pictures of every finding): [{_md(self.page_url)}]({_md(url).replace(' ', '%20')})")
        lines += ["", "| rank | capture | region | status | decision | capture score | score max | findings | label |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for i, r in enumerate(self.top[:top_n], 1):
            score, peak = ("" if pd.isna(r.get(k)) else f"{r[k]:.3f}" for k in ("capture_score", "score_max"))
            lines.append(
                f"| {i} | {_md(r['capture_id'])} | {_md(r['train_id'])}/{_md(r['car'])}/{_md(r['region_id'])} | "
                f"{_md(r['status'])} | {_md(r.get('decision'))} | {score} | {peak} | {_md(r.get('n_findings')) or 0} | "
                f"{_md(r.get('label'))} |"
            )
        lines += ["", f"maps: {_md(self.maps_url)}", *(f"{_md(k)}: {_md(v)}" for k, v in self.reports.items())]
        return "\n".join(lines)


def _md(value: Any) -> str:
    """A value for the Markdown summary: "" for a null, control characters escaped, '|' escaped for table cells."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, float) and value.is_integer():  # a car of a column that also holds nulls
        value = int(value)
    return printable(value).replace("|", "\\|")


def summarize(store: Store, plan: NightPlan, captures: list[CaptureRow], seconds: float, reports: dict[str, str]) -> NightSummary:
    """Summarise a night's capture report rows; ``seconds`` is its wall time.

    Captures are ranked by ``capture_score`` (the decision-consistent score; ``score_max`` for rows without one).
    When the night has labels, each top row gets a ``label`` and the image AUROC of that ranking is computed
    (only when both normal and anomalous scored captures are labelled).
    """
    from ..evaluation.metrics import roc_auc

    df = pd.DataFrame([row_dict(r) for r in captures])
    if not df.empty:
        rank = df["capture_score"] if "capture_score" in df else pd.Series(np.nan, index=df.index)
        df["_rank"] = rank.astype(float).fillna(df["score_max"].astype(float)) if "score_max" in df else rank
    labels = store.read_labels(plan.depot, plan.night)
    auroc = None
    if not df.empty and not labels.empty:
        lab = dict(zip(labels["capture_id"], labels["anomalous"]))
        df["label"] = df["capture_id"].map(lambda c: ("anomalous" if lab[c] else "normal") if c in lab else "")
        scored = df[df["_rank"].notna() & (df["label"] != "")]
        if scored["label"].nunique() == 2:
            auroc = float(roc_auc(scored["_rank"].to_numpy(float), (scored["label"] == "anomalous").to_numpy()))
    top = (df.sort_values("_rank", ascending=False, na_position="last").drop(columns="_rank").to_dict("records")
           if not df.empty else [])
    return NightSummary(
        depot=plan.depot,
        night=plan.night,
        model=plan.model_ref,
        n_captures=len(df),
        by_status=df["status"].value_counts().to_dict() if not df.empty else {},
        n_anomalous=int((df.get("decision") == DECISION_ANOMALOUS).sum()) if not df.empty else 0,
        top=top,
        seconds=seconds,
        reports=reports,
        maps_url=plan.maps_url,
        image_auroc=auroc,
    )
