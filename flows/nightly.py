"""The nightly inspection flow: manifest -> histories -> batches on Dask -> Zarr maps + Parquet reports."""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from anodet_core.config import Settings, local_timezone
from anodet_core.night.plan import NightSummary, split_jobs, summarize
from anodet_core.store.layout import Store
from anodet_core.store.schemas import CaptureRow, FindingRow
from tasks.inspection import Sealed, plan_night_task, score_batch_task, write_night_page_task, write_reports_task

from .runners import SettingsTaskRunner, build_task_runner, ephemeral_run_settings, inference_placement


def last_night(now: dt.datetime | None = None) -> str:
    """The night a run at ``now`` (default: now, in ANODET_TIMEZONE or local time) should process."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(Settings.from_env().timezone or local_timezone())
    now = (now or dt.datetime.now(tz)).astimezone(tz)
    return (now - dt.timedelta(hours=12)).date().isoformat()


# the runner is built from the environment when a run starts (SettingsTaskRunner), not at import;
# TaskRunner is invariant in its future type, which Flow's annotation fixes to PrefectFuture
@flow(name="nightly-inspection", task_runner=SettingsTaskRunner(), log_prints=False)  # type: ignore[arg-type]
def nightly_inspection(
    depot: str,
    night: str | None = None,
    store: str | None = None,
    model: str | None = None,
    batch_size: int | None = None,
    threshold: float | None = None,
    task_pairs: int | None = None,
    second_opinion: bool | None = None,
    device: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> NightSummary:
    """Score every capture of one depot-night against its history with the depot's production model.

    One Prefect task per batch of ``task_pairs`` pairs (not per capture); batches run in Dask workers, each of
    which loads the model once and runs the model on sub-batches of ``batch_size`` pairs. Re-running a night
    replaces its maps and report partitions. Captures without history are scored by their region's production
    single-image model (``<arch>-<region_id>``, arch from ANODET_SINGLE_IMAGE, "" disables) when it exists, else
    reported ``no_history``. ``second_opinion`` (ANODET_SECOND_OPINION) also scores captures with history by that
    model (report columns ``second_*``). ``storage_options`` (ANODET_STORAGE_OPTIONS): the store's fsspec options,
    kept with the run's parameters, so never credentials (Settings refuses them).
    """
    settings = Settings.from_env(store=store, model=model, batch_size=batch_size, threshold=threshold,
                                 task_pairs=task_pairs, second_opinion=second_opinion, device=device,
                                 storage_options=storage_options)
    night = night or last_night()
    st = Store(settings.store, settings.storage_options or None)
    logger = get_run_logger()
    run_id = str(flow_run.get_id() or "")
    t0 = time.perf_counter()
    plan = plan_night_task(st, depot, night, settings, run_id)
    settings = settings.with_(threshold=plan.threshold, min_finding_area=plan.min_finding_area)  # one operating point
    logger.info("night %s/%s: %d captures, model %s", plan.depot, plan.night, len(plan.jobs), plan.model_ref)
    if plan.single_models:
        logger.info("captures without history scored by single-image models: %s", plan.single_models)
    with inference_placement(settings):  # only on workers offering ANODET_INFERENCE_RESOURCES, when set
        futures = [
            score_batch_task.submit(st, plan.depot, plan.night, Sealed(batch), plan.model_ref, settings, run_id,
                                    plan.single_models, plan.maps_rel)
            for batch in split_jobs(plan.jobs, settings.task_pairs)
        ]
    captures: list[CaptureRow] = []
    findings: list[FindingRow] = []
    for fut in futures:
        res = fut.result()
        captures += res.captures
        findings += res.findings
    reports = write_reports_task(st, plan.depot, plan.night, Sealed(captures), Sealed(findings), Sealed(plan), run_id)
    page = write_night_page_task(st, plan.depot, plan.night, settings)
    summary = summarize(st, plan, captures, time.perf_counter() - t0, reports)
    summary.page_url = page
    key = re.sub(r"[^a-z0-9-]+", "-", f"night-{plan.depot}-{plan.night}".lower())
    create_markdown_artifact(summary.markdown(), key=key, description=f"anodet night {plan.depot} {plan.night}")
    return summary


def run_night(settings: Settings, depot: str, night: str) -> NightSummary:
    """Run the flow for one night with the task runner these settings ask for (the CLI and the bench)."""
    from prefect.settings import temporary_settings

    flow = nightly_inspection.with_options(task_runner=build_task_runner(settings))  # type: ignore[arg-type]  # as above
    with temporary_settings(updates=ephemeral_run_settings(settings)):
        return flow(depot=depot, night=night, store=settings.store, model=settings.model, batch_size=settings.batch_size,
                    second_opinion=settings.second_opinion, device=settings.device, storage_options=settings.storage_options)
