"""Where tasks run: a Dask ``LocalCluster`` by default, or an existing scheduler (``ANODET_DASK_ADDRESS``)."""

from __future__ import annotations

from prefect_dask import DaskTaskRunner

from anodet_core.config import Settings


def local_cluster_kwargs(settings: Settings) -> dict:
    return {
        "n_workers": settings.dask_workers,
        "threads_per_worker": settings.dask_threads,
        "processes": True,
        "dashboard_address": None,  # no port to collide with on shared hosts; bokeh is not installed anyway
    }


def build_task_runner(settings: Settings) -> DaskTaskRunner:
    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=local_cluster_kwargs(settings))
