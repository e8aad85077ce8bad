"""Tasks of the nightly inspection flow."""

from __future__ import annotations

from typing import Generic, TypeVar

from prefect import task
from prefect.cache_policies import NONE

from anodet_core.config import Settings
from anodet_core.night.batch import BatchResult, process_batch
from anodet_core.night.history import PairJob
from anodet_core.night.plan import NightPlan, plan_night, write_reports
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
                      second_opinion=settings.second_opinion)


@task(name="score-batch", cache_policy=NONE, retries=1, retry_delay_seconds=5)
def score_batch_task(store: Store, depot: str, night: str, jobs: Sealed[list[PairJob]], model_ref: str,
                     settings: Settings, run_id: str, single_models: dict[str, str] | None = None) -> BatchResult:
    """One batch of pairs in one Dask worker: decode, register, infer, write maps, return report rows
    (captures without history: their region's pinned single-image model in ``single_models``, if any)."""
    return process_batch(store, depot, night, jobs.value, model_ref, settings, run_id, single_models)


@task(name="write-reports", cache_policy=NONE, retries=2, retry_delay_seconds=5)
def write_reports_task(
    store: Store, depot: str, night: str, captures: Sealed[list[CaptureRow]], findings: Sealed[list[FindingRow]]
) -> dict[str, str]:
    """Replace the night's capture and finding report partitions (:func:`anodet_core.night.plan.write_reports`); returns their URLs."""
    return write_reports(store, depot, night, captures.value, findings.value)
