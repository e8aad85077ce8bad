"""Tasks of the nightly inspection flow."""

from __future__ import annotations

from typing import Generic, TypeVar

from prefect import task
from prefect.cache_policies import NONE

from anodet_core.config import Settings
from anodet_core.night.batch import process_batch
from anodet_core.night.history import PairJob
from anodet_core.night.plan import NightPlan, plan_night, write_reports
from anodet_core.night.rows import BatchResult
from anodet_core.store.layout import Store
from anodet_core.store.schemas import CaptureRow, FindingRow

T = TypeVar("T")


class Sealed(Generic[T]):
    """Carries a large parameter (a batch's jobs, a night's report rows) into a task without being walked.

    Prefect walks every task parameter looking for futures (``visit_collection``: lists, tuples, dicts,
    dataclasses), a noticeable cost per night in the flow process. Prefect's own ``quote``/``opaque`` are
    tuple subclasses, and Dask's argument packing turns them into plain tuples before the task sees them. A
    plain object is traversed by neither.
    """

    __slots__ = ("value",)

    def __init__(self, value: T):
        self.value = value

    def __repr__(self) -> str:
        n = len(self.value) if hasattr(self.value, "__len__") else "?"
        return f"Sealed({type(self.value).__name__} of {n})"


@task(name="plan-night", cache_policy=NONE)
def plan_night_task(store: Store, depot: str, night: str, settings: Settings, run_id: str) -> NightPlan:
    """Manifest -> histories -> pinned model versions (paired, and single-image for no-history regions) and
    operating point (threshold, min finding area) -> empty map group."""
    return plan_night(store, depot, night, settings.model, map_dtype=settings.map_dtype, run_id=run_id,
                      threshold=settings.threshold, min_finding_area=settings.min_finding_area,
                      single_image=settings.single_image,
                      second_opinion=settings.second_opinion, allowed_uri_prefixes=settings.allowed_uri_prefixes)


@task(name="score-batch", cache_policy=NONE, retries=1, retry_delay_seconds=5)
def score_batch_task(store: Store, depot: str, night: str, jobs: Sealed[list[PairJob]], model_ref: str,
                     settings: Settings, run_id: str, single_models: dict[str, str] | None = None,
                     maps_rel: str | None = None) -> BatchResult:
    """One batch of pairs in one Dask worker: decode, register, infer, write maps, return report rows
    (captures without history: their region's pinned single-image model in ``single_models``, if any)."""
    return process_batch(store, depot, night, jobs.value, model_ref, settings, run_id, single_models, maps_rel)


@task(name="write-reports", cache_policy=NONE, retries=2, retry_delay_seconds=5)
def write_reports_task(
    store: Store, depot: str, night: str, captures: Sealed[list[CaptureRow]], findings: Sealed[list[FindingRow]],
    plan: Sealed[NightPlan] | None = None, run_id: str = "",
) -> dict[str, str]:
    """Publish the night: its reports and the plan's map group in one step (:func:`anodet_core.night.plan.write_reports`);
    returns the report files' URLs."""
    gen, rel = (plan.value.generation or None, plan.value.maps_rel or None) if plan is not None else (None, None)
    return write_reports(store, depot, night, captures.value, findings.value, generation=gen, maps_rel=rel, run_id=run_id)


@task(name="write-night-page", cache_policy=NONE)
def write_night_page_task(store: Store, depot: str, night: str, settings: Settings) -> str:
    """The published night's HTML page into the store (:func:`anodet_core.reporting.night_page.write_night_page`);
    its URL, or "" when it could not be written: the page is a view of the night, never a reason to fail it."""
    from prefect import get_run_logger

    from anodet_core.reporting.night_page import write_night_page
    from anodet_core.text import printable

    try:
        return write_night_page(store, depot, night, registration=settings.registration,
                                allowed_uri_prefixes=settings.allowed_uri_prefixes)
    except Exception as exc:  # the reports are published already; say why the page is missing, keep the night
        get_run_logger().warning("night page of %s/%s not written: %s", depot, night, printable(exc))
        return ""
