"""Where tasks run: a Dask ``LocalCluster`` by default, or an existing scheduler (``ANODET_DASK_ADDRESS``)."""

from __future__ import annotations

from prefect_dask import DaskTaskRunner

from anodet_core.config import Settings


def worker_env(settings: Settings) -> dict[str, str]:
    """Environment of inference workers (Dask's defaults are tuned for pandas-style tasks, not for torch).

    Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536, which also freezes glibc's mmap threshold: every large
    activation buffer is then mmap'd and unmapped per layer, and the model ran 25-30 % slower (measured with
    ``anodet bench``). Fixed thresholds of 1 GiB (trim) and 32 MiB (mmap) keep those buffers in the heap.
    OMP/MKL thread counts follow the torch threads each worker uses.
    """
    from anodet_core.pipeline import worker_threads

    threads = str(worker_threads(settings))
    return {
        "MALLOC_TRIM_THRESHOLD_": "1073741824",
        "MALLOC_MMAP_THRESHOLD_": "33554432",
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": "1",
    }


# Dask's housekeeping is tuned for many short pandas tasks; next to torch on 2 cores it took CPU and the GIL from
# score-batch tasks of a few seconds each. Measured per 64-pair task: the statistical profiler (walks every
# thread's stack each 10 ms; its flame graphs need bokeh, not installed) 8.9-9.8 s -> 7.7-8.1 s; then the 20 ms
# event-loop tick and the 0.5 s system monitor (dashboard figures) a further ~4 % (16.0 -> 15.3 s per 128
# pairs, two runs each). Memory monitoring (pause/terminate) is left as it is. Spawned workers inherit this config.
WORKER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "200ms",
    "distributed.admin.system-monitor.interval": "5s",
}


def configure_worker_env(settings: Settings) -> None:
    """Make nannies started from this process spawn workers with :func:`worker_env` and :data:`WORKER_CONFIG`.

    Must go through ``distributed.nanny.pre-spawn-environ``: glibc reads MALLOC_* once at process start, and
    the nanny's ``env`` argument is applied only after the worker has started. External ``dask worker``
    processes get the same through DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON (see infra/).
    """
    import dask

    current = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    dask.config.set({"distributed.nanny.pre-spawn-environ": {**current, **worker_env(settings)}})
    dask.config.set(WORKER_CONFIG)


def local_cluster_kwargs(settings: Settings) -> dict:
    configure_worker_env(settings)
    return {
        "n_workers": settings.dask_workers,
        "threads_per_worker": settings.dask_threads,
        "processes": True,
        "dashboard_address": None,  # no port to collide with on shared hosts; bokeh is not installed anyway
    }


def build_task_runner(settings: Settings) -> DaskTaskRunner:
    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    configure_worker_env(settings)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=local_cluster_kwargs(settings))
