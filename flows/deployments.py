"""Deployments and schedules served by ``anodet serve`` (Prefect's own deployment and schedule mechanisms).

Configured by :class:`anodet_core.config.Settings` (validated there, with laptop defaults):
  depots         ANODET_DEPOTS, comma-separated depots, each optionally with its own cron: "north,south@30 1 * * *"
                 (default: the depots found in the store, else "demo")
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


def schedules(settings: Settings) -> list[DepotSchedule]:
    """One schedule per depot of ``settings.depots``, else per depot of the store (else "demo"), in ``settings.timezone``.

    The settings have validated the listed depots and every cron; a depot found in the store is checked here
    (ValueError for a name that cannot be a depot).
    """
    tz = settings.timezone or local_timezone()
    listed = [(e.depot, e.cron) for e in settings.depots]
    if not listed:
        found = Store(settings.store, settings.storage_options or None).depots() or ["demo"]
        listed = [(check_name(depot, "depot"), "") for depot in found]
    return [DepotSchedule(depot, cron or settings.nightly_cron, settings.retrain_cron, tz) for depot, cron in listed]


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
