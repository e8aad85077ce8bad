"""Deployments and schedules served by ``anodet serve`` (Prefect's own deployment and schedule mechanisms).

Configuration (environment, with laptop defaults):
  ANODET_DEPOTS         comma-separated depots, each optionally with its own cron: "north,south@30 1 * * *"
                        (default: the depots found in the store, else "demo")
  ANODET_NIGHTLY_CRON   cron of the nightly run for depots without their own (default "0 2 * * *")
  ANODET_RETRAIN_CRON   cron of retraining per depot (default weekly, "0 4 * * 0")
  ANODET_TIMEZONE       timezone of the crons (default: this machine's local timezone)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prefect.schedules import Cron

from anodet_core.config import Settings, local_timezone
from anodet_core.store.layout import Store
from anodet_core.store.names import check_name

DEFAULT_NIGHTLY_CRON = "0 2 * * *"
DEFAULT_RETRAIN_CRON = "0 4 * * 0"


@dataclass(frozen=True)
class DepotSchedule:
    """When one depot's nightly and retraining runs are scheduled (cron strings in ``timezone``)."""

    depot: str
    nightly_cron: str
    retrain_cron: str
    timezone: str


def schedules_from_env(settings: Settings | None = None) -> list[DepotSchedule]:
    """One schedule per depot from the ``ANODET_*`` variables above; ValueError for an invalid depot name."""
    settings = settings or Settings.from_env()
    nightly = os.environ.get("ANODET_NIGHTLY_CRON", DEFAULT_NIGHTLY_CRON)
    retrain = os.environ.get("ANODET_RETRAIN_CRON", DEFAULT_RETRAIN_CRON)
    tz = os.environ.get("ANODET_TIMEZONE") or local_timezone()
    raw = os.environ.get("ANODET_DEPOTS", "")
    entries = [e.strip() for e in raw.split(",") if e.strip()]
    if not entries:
        entries = Store(settings.store, settings.storage_options or None).depots() or ["demo"]
    out = []
    for entry in entries:
        depot, _, cron = entry.partition("@")
        out.append(DepotSchedule(check_name(depot.strip(), "depot"), cron.strip() or nightly, retrain, tz))
    return out


def build_deployments(schedules: list[DepotSchedule]) -> list:
    """One nightly and one retraining deployment per depot; the nightly run resolves its night at run time."""
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
                )
            )
    return deployments
