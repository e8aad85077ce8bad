"""Where tasks run: a Dask ``LocalCluster`` by default, or an existing scheduler (``ANODET_DASK_ADDRESS``); and the
Prefect API server the runs report to when none is configured."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from prefect_dask import DaskTaskRunner

from anodet_core.config import Settings

if TYPE_CHECKING:
    from distributed import Worker

log = logging.getLogger(__name__)


def worker_env(settings: Settings) -> dict[str, str]:
    """Environment of inference workers (Dask's defaults are tuned for pandas-style tasks, not for torch).

    Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536, which also freezes glibc's mmap threshold: every large
    activation buffer is then mmap'd and unmapped per layer, and the model ran markedly slower (``anodet bench``
    shows it). As :func:`anodet_core.allocator.keep_freed_memory` does for the running process: no mmap'd blocks
    (even above glibc's 32 MiB mmap-threshold cap, which a 448-896 px batch exceeds), a 64 GiB trim threshold (in
    effect none) and one arena, because tasks run on the worker's threads and a thread arena maps large blocks regardless.
    OMP/MKL thread counts follow the torch threads each worker uses. OpenMP threads that wait at a barrier
    sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE) so that the worker's preparation helpers
    (anodet_core.night.prep_pool, idle scheduling class) get the cycles the forward pass leaves; the model alone did
    not change beyond the machine's noise with it (README, performance).
    """
    from anodet_core.night.batch import worker_threads

    threads = str(worker_threads(settings))
    return {
        "MALLOC_TRIM_THRESHOLD_": "68719476736",
        "MALLOC_MMAP_MAX_": "0",
        "MALLOC_ARENA_MAX": "1",
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
    }


# Dask's housekeeping is tuned for many short pandas tasks; next to torch on a few cores it took CPU and the GIL
# from score-batch tasks of a few seconds each. Turned off or slowed down, each measurably faster: the statistical
# profiler (walks every thread's stack at a short interval; its flame graphs need bokeh, not installed), the
# event-loop tick and the system monitor (dashboard figures). Memory monitoring (pause/terminate) is left as it
# is. Workers are not daemonic processes, so that they may start preparation helper processes
# (anodet_core.night.prep_pool; the nanny still ends them). Spawned workers inherit this config.
WORKER_CONFIG = {
    "distributed.worker.daemon": False,
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
    """``LocalCluster`` keyword arguments for ``settings`` (worker processes, threads, free dashboard port).

    Also configures this process's Dask config so the workers spawn with :func:`worker_env` (see
    :func:`configure_worker_env`).
    """
    configure_worker_env(settings)
    return {
        "n_workers": settings.dask_workers,
        "threads_per_worker": settings.dask_threads,
        "processes": True,
        # the scheduler's HTTP server (health, metrics; no dashboard: bokeh is not installed) on a free port: the
        # default 8787 collides with a second cluster on the same host (the bench runs two)
        "dashboard_address": ":0",
        # the local workers offer what score-batch tasks ask for (inference_placement), else those would wait forever
        **({"resources": {**settings.training_resources, **settings.inference_resources}}
           if settings.inference_resources or settings.training_resources else {}),
    }


def inference_placement(settings: Settings) -> AbstractContextManager[None]:
    """Context for submitting score-batch tasks: Dask resource restrictions ``settings.inference_resources``.

    ``dask.annotate`` rather than a runner option: prefect-dask's ``DaskTaskRunner.submit`` passes no
    ``resources`` to ``Client.submit``, which merges the annotations of the submitting context
    (``dask.get_annotations()``) into the graph it sends to the scheduler. The scheduler then holds each task
    until a worker offering the resources (``dask worker --resources GPU=1``) is free; none: it waits.
    """
    return _placement(settings.inference_resources)


def training_placement(settings: Settings) -> AbstractContextManager[None]:
    """Like :func:`inference_placement` for the retraining flow's training tasks (``settings.training_resources``)."""
    return _placement(settings.training_resources)


def _placement(resources: dict[str, float]) -> AbstractContextManager[None]:
    if not resources:
        return nullcontext()
    import dask

    return dask.annotate(resources=dict(resources))


async def settle_worker(dask_worker: Worker, timeout: float = 5.0) -> bool:
    """In each Dask worker's event loop at the end of a flow run (:class:`FlowDaskTaskRunner`), API still up.

    Prefect's events and API-log services in the worker would otherwise keep their queue and their connection to
    the run's API server past the run: an ephemeral server is gone with its flow process, and at SIGTERM the
    worker's exit drain then retried it for seconds ("EventsWorker - Still processing items") until the nanny
    killed the worker (it waits 8 s). Drained here, they are stopped and forgotten; the next task run starts
    fresh ones. Skipped (False) while the worker executes tasks, of another flow run on the same cluster, say:
    stopping the services under those would fail their sends; that run's own end drains them.

    Also freezes the worker's objects at its interpreter exit (once): the final garbage collections over the
    torch and Prefect objects took most of the worker's exit (seconds; about 1 s with them frozen).
    """
    import atexit
    import gc

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    if not getattr(settle_worker, "exit_frozen", False):
        atexit.register(gc.freeze)  # atexit runs after the services' own exit drains (threading's atexit)
        settle_worker.exit_frozen = True  # type: ignore[attr-defined]
    if dask_worker.state.executing_count:
        return False
    for service in (APILogWorker, EventsWorker):  # logs first: the events worker may still log
        await service.drain_all(timeout=timeout, at_exit=False)  # type: ignore[misc]  # awaitable on a running loop
    return True


class FlowDaskTaskRunner(DaskTaskRunner):
    """``DaskTaskRunner`` that settles every worker (:func:`settle_worker`) before its client closes at a run's end
    (not at a Ctrl-C's: see :meth:`__exit__`)."""

    def __exit__(self, *args: Any) -> None:
        """Settle the workers while the run's API server is up, then close as ``DaskTaskRunner`` does."""
        try:
            # not after a Ctrl-C: the terminal signalled the whole process group, local workers included, and
            # waiting on those exiting workers took seconds (an interrupted run's workers settle at their next run's end)
            if self._client is not None and not (args and isinstance(args[1], KeyboardInterrupt)):
                self._client.run(settle_worker)
        except Exception as exc:  # a worker lost at the end of the run must not fail a finished run
            log.warning("could not settle the Dask workers after the flow run: %s", exc)
        finally:
            super().__exit__(*args)


def build_task_runner(settings: Settings) -> DaskTaskRunner:
    """A Dask task runner: on ``settings.dask_address`` when set, else on a new ``LocalCluster`` per flow run."""
    if settings.dask_address:
        return FlowDaskTaskRunner(address=settings.dask_address)
    configure_worker_env(settings)
    return FlowDaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=local_cluster_kwargs(settings))


class SettingsTaskRunner(DaskTaskRunner):
    """A flow's default task runner: ``build_task_runner(Settings.from_env())``, built when a flow run starts.

    Prefect runs every flow run on ``flow.task_runner.duplicate()``, entered in the process that runs the flow
    (a served deployment's run is a freshly spawned process); the duplicate is the real runner. So importing a
    flow's module builds no runner and changes no Dask config, and each run reads the environment it starts
    in. ``flow.with_options(task_runner=build_task_runner(settings))`` (the CLI) replaces it.
    """

    def duplicate(self) -> DaskTaskRunner:  # type: ignore[override]  # the real runner, deliberately not a SettingsTaskRunner
        """The runner for one flow run: :func:`build_task_runner` on the settings of the current environment."""
        return build_task_runner(Settings.from_env())


def _loopback(address: str) -> bool:
    from distributed.comm import get_address_host

    try:
        return get_address_host(address) in {"127.0.0.1", "localhost", "::1"}
    except ValueError:
        return False


def ephemeral_run_settings(settings: Settings) -> dict:
    """Prefect setting overrides for a flow run from this process: none with a real API server (PREFECT_API_URL).

    Without one, Prefect starts an ephemeral API server in this process, and
      * each Dask worker process would start one more for its task runs (the settings the runner ships to the
        workers carry no URL): seconds of cold start per worker before its first task, and a uvicorn process each. So the
        ephemeral server is started here and its URL handed on; only when the workers can reach this host's
        loopback (a LocalCluster, or a scheduler on 127.0.0.1), else they keep their own servers.
        That server runs in a session of its own (:mod:`flows.api_server`), so that a Ctrl-C of the CLI leaves it
        up until the run has reported its end.
      * nothing outlives the run to act on a missing flow-run heartbeat (crash detection needs a lasting
        server), while the heartbeat thread, which sleeps in 1 s steps, is joined when the flow ends: up to 1 s
        of idle wall per run. Heartbeats are turned off.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings

    if get_current_settings().api.url:
        return {}
    updates: dict = {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    if not settings.dask_address or _loopback(settings.dask_address):
        from .api_server import DetachedASGIServer

        server = DetachedASGIServer()  # one per process, reused by its later runs; out of the terminal's Ctrl-C
        server.start()
        updates[PREFECT_API_URL] = server.api_url
    return updates
