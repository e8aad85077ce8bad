"""Deployments and schedules served by ``anodet serve`` (Prefect's own deployment and schedule mechanisms).

Configured by :class:`anodet_core.config.Settings` (validated there, with laptop defaults):
  depots         ANODET_DEPOTS, comma-separated depots, each optionally with its own cron: "north,south@30 1 * * *"
                 (default: the depots found in the store -- its bench depots only when it has no other --,
                 else "demo")
  nightly_cron   ANODET_NIGHTLY_CRON, cron of the nightly run for depots without their own (default "0 2 * * *")
  retrain_cron   ANODET_RETRAIN_CRON, cron of retraining per depot (default weekly, "0 4 * * 0")
  timezone       ANODET_TIMEZONE, IANA timezone of the crons (default: this machine's local timezone)
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect.schedules import Cron
from prefect.types.entrypoint import EntrypointType

from anodet_core.config import Settings, local_timezone
from anodet_core.store.layout import Store
from anodet_core.store.names import check_name


@dataclass(frozen=True)
class DepotSchedule:
    """When one depot's nightly and retraining runs are scheduled (cron strings in ``timezone``)."""

    depot: str
    nightly_cron: str
    retrain_cron: str
    timezone: str
    bench: bool = False  # the depot holds generated bench data (``anodet bench``, :meth:`Store.mark_bench_depot`)


def plan(settings: Settings) -> tuple[list[DepotSchedule], list[str]]:
    """(the schedules, the bench depots kept out). One schedule per depot of ``settings.depots``, else per depot of
    the store -- its real depots, and its bench depots only when it has no real one: a store that holds bench data
    alone serves it like any other depot, while beside real depots bench data is scheduled only when listed in
    ``ANODET_DEPOTS`` -- else "demo", in ``settings.timezone``. The settings have validated the listed depots and
    every cron; ValueError for a name found in the store that cannot be a depot."""
    tz = settings.timezone or local_timezone()
    store = Store(settings.store, settings.storage_options or None)
    kept_out: list[str] = []
    listed = [(e.depot, e.cron) for e in settings.depots]
    if not listed:
        found = [check_name(depot, "depot") for depot in store.depots()]
        bench = [d for d in found if store.is_bench_depot(d)]
        real = [d for d in found if d not in bench]
        if real:
            kept_out = bench
        listed = [(depot, "") for depot in (real or bench or ["demo"])]
    planned = [DepotSchedule(depot, cron or settings.nightly_cron, settings.retrain_cron, tz, store.is_bench_depot(depot))
               for depot, cron in listed]
    return planned, kept_out


def schedules(settings: Settings) -> list[DepotSchedule]:
    """The schedules of :func:`plan`."""
    return plan(settings)[0]


def build_deployments(schedules: list[DepotSchedule]) -> list:
    """One nightly and one retraining deployment per depot, entered by module path; the nightly run resolves its
    night at run time unless given one (its ``night`` parameter)."""
    from flows.nightly import nightly_inspection
    from flows.retrain import retrain

    deployments = []
    for s in schedules:
        for fn, kind, cron, description in (
            (nightly_inspection, "nightly", s.nightly_cron, f"Nightly inspection of depot {s.depot} with its production model"),
            (retrain, "retrain", s.retrain_cron, f"Retrain on depot {s.depot}'s labels; promote only with evidence"),
        ):
            deployments.append(
                fn.to_deployment(
                    name=f"{kind}-{s.depot}",
                    schedules=[Cron(cron, timezone=s.timezone)],
                    parameters={"depot": s.depot},
                    tags=["anodet", kind, s.depot],
                    description=description,
                    # "flows.nightly.nightly_inspection", imported as a module where the run starts: a file path
                    # entrypoint loads flows/nightly.py as a script, whose relative imports and pickled references
                    # (Dask ships the tasks by module name) then fail
                    entrypoint_type=EntrypointType.MODULE_PATH,
                )
            )
    return deployments
