"""The backfill flow: the nightly flow over a range of a depot's nights, oldest first, one pinned model version.

Resumable by construction: each night publishes atomically (:mod:`anodet_core.store.publish`), so an interrupted
backfill leaves complete nights plus at most one unpublished generation, and a rerun skips the nights whose
committed report was written by the pinned version and redoes the rest (the next publish clears the debris).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field

from prefect import flow, get_run_logger

from anodet_core.config import Settings
from anodet_core.registry.model_store import resolve_card
from anodet_core.store.layout import Store
from anodet_core.store.names import check_name, check_night
from anodet_core.store.publish import read_commit
from anodet_core.store.schemas import DECISION_ANOMALOUS
from anodet_core.text import printable

from .nightly import nightly_inspection
from .runners import build_task_runner, ephemeral_run_settings, local_cluster_kwargs

DONE, SKIPPED, FAILED = "done", "skipped", "failed"


@dataclass
class NightOutcome:
    """What the backfill did with one night: its status (done, skipped, failed), counts, wall time, generation."""

    night: str
    status: str
    seconds: float = 0.0
    n_captures: int = 0
    n_anomalous: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    generation: str = ""  # the committed generation after this night's step (empty when none)
    message: str = ""  # why it failed

    def line(self) -> str:
        """One plain progress line (no carriage returns: it goes to log files too)."""
        counts = f"{self.n_captures} captures, {self.n_anomalous} anomalous"
        if self.by_status:
            counts += f" ({', '.join(f'{printable(k)}: {v}' for k, v in sorted(self.by_status.items()))})"
        what = printable(self.message) if self.status == FAILED else counts
        return f"{self.night}  {self.status:<7}  {what}  {self.seconds:.1f} s"


@dataclass
class BackfillResult:
    """A backfill's outcome: the depot, the pinned model, one :class:`NightOutcome` per night (oldest first)."""

    depot: str
    model: str
    nights: list[NightOutcome] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        """How many nights ended with ``status``."""
        return sum(n.status == status for n in self.nights)

    def summary(self) -> str:
        """The final summary line."""
        failed = [n.night for n in self.nights if n.status == FAILED]
        return (f"backfill of depot {printable(self.depot)} with {printable(self.model)}: {self.count(DONE)} done, "
                f"{self.count(SKIPPED)} skipped, {len(failed)} failed of {len(self.nights)} nights in {self.seconds:.1f} s"
                + (f"; failed: {', '.join(failed)}" if failed else ""))


def backfill_nights(store: Store, depot: str, night_from: str, night_to: str) -> list[str]:
    """The depot's nights with a manifest in ``[night_from, night_to]``, oldest first; ValueError for bad bounds."""
    depot, night_from, night_to = check_name(depot, "depot"), check_night(night_from), check_night(night_to)
    if night_from > night_to:
        raise ValueError(f"--from {night_from} is after --to {night_to}")
    return [n for n in store.nights(depot) if night_from <= n <= night_to]


def pin_model(store: Store, ref: str) -> tuple[str, str, str]:
    """``(ref, name, version)`` a model reference resolves to now: NAME alone becomes NAME:VERSION of its
    production version, so that every night of a backfill uses the same weights. A local folder stays as given."""
    card = resolve_card(store, ref)
    return (ref if os.path.exists(ref) else f"{card.name}:{card.version}"), card.name, card.version


def reported_with(store: Store, depot: str, night: str, name: str, version: str) -> NightOutcome | None:
    """The skipped outcome of a night whose committed report covers its whole manifest and was scored by
    ``name:version``, else None (never run, run with another version, or its manifest has changed since).

    Rows of captures scored by single-image models carry those models' names and do not count either way.
    """
    commit = read_commit(store, depot, night)
    rel = commit.files.get("captures") if commit else None
    if commit is None or rel is None:
        return None
    rows = store.read_table(rel).select(["model_name", "model_version", "status", "decision"]).to_pandas()
    paired = rows[rows.model_name == name]
    if paired.empty or (paired.model_version != version).any():
        return None
    if len(rows) != store.read_table(store.manifest_rel(depot, night)).num_rows:
        return None
    return NightOutcome(night, SKIPPED, n_captures=len(rows), n_anomalous=int((rows.decision == DECISION_ANOMALOUS).sum()),
                        by_status=rows.status.value_counts().to_dict(), generation=commit.generation)


@flow(name="backfill", log_prints=False)
def backfill(
    depot: str,
    night_from: str,
    night_to: str,
    store: str | None = None,
    model: str | None = None,
    force: bool = False,
    batch_size: int | None = None,
    second_opinion: bool | None = None,
    device: str | None = None,
) -> BackfillResult:
    """Run the nightly flow, as a subflow, for every night of ``depot`` with a manifest in ``[night_from, night_to]``.

    Oldest first, since a night's histories come from the earlier nights' reports. ``model`` (ANODET_MODEL) is
    pinned once at the start (:func:`pin_model`). A night already reported with that version is skipped unless
    ``force``. A night that fails is reported and the backfill goes on with the next. All subflows share one Dask
    cluster (ANODET_DASK_ADDRESS, else one LocalCluster, started only when a night needs to run), so the workers
    keep the model loaded from night to night. Prints one line per night as it ends.
    """
    from distributed import LocalCluster

    settings = Settings.from_env(store=store, model=model, batch_size=batch_size, second_opinion=second_opinion, device=device)
    st = Store(settings.store, settings.storage_options or None)
    logger = get_run_logger()
    t0 = time.perf_counter()
    nights = backfill_nights(st, depot, night_from, night_to)
    ref, name, version = pin_model(st, settings.model)
    result = BackfillResult(depot, ref)
    _say(logger, f"backfill of depot {printable(depot)}: {len(nights)} nights with a manifest in {night_from}..{night_to}, "
                 f"model {printable(ref)}" + (", forced" if force else ""))
    with contextlib.ExitStack() as stack:
        address = settings.dask_address
        for night in nights:
            t = time.perf_counter()
            try:
                outcome = None if force else reported_with(st, depot, night, name, version)
                if outcome is None:
                    if not address:  # the first night to run starts the cluster the others reuse
                        address = stack.enter_context(LocalCluster(**local_cluster_kwargs(settings))).scheduler_address
                    outcome = _run(st, settings.with_(dask_address=address), depot, night, ref)
            except Exception as exc:  # noqa: BLE001  # one night's failure (even an unreadable commit) is reported, not raised
                outcome = NightOutcome(night, FAILED, message=_one_line(exc))
            outcome.seconds = time.perf_counter() - t
            result.nights.append(outcome)
            _say(logger, outcome.line())
    result.seconds = time.perf_counter() - t0
    _say(logger, result.summary())
    return result


def _run(store: Store, settings: Settings, depot: str, night: str, ref: str) -> NightOutcome:
    """One night through the nightly flow as a subflow; its failure is returned as a failed outcome, not raised."""
    sub = nightly_inspection.with_options(task_runner=build_task_runner(settings),  # type: ignore[arg-type]  # see flows.nightly
                                          flow_run_name=f"{depot}-{night}")
    state = sub(depot=depot, night=night, store=settings.store, model=ref, batch_size=settings.batch_size,
                second_opinion=settings.second_opinion, device=settings.device, return_state=True)
    commit = read_commit(store, depot, night)
    generation = commit.generation if commit else ""
    if not state.is_completed():
        try:
            state.result()  # raises the night's exception
        except Exception as exc:  # noqa: BLE001  # as in the loop: reported, not raised
            return NightOutcome(night, FAILED, generation=generation, message=_one_line(exc))
        return NightOutcome(night, FAILED, generation=generation, message=" ".join(str(state.message or state.name).split()))
    s = state.result()
    return NightOutcome(night, DONE, n_captures=s.n_captures, n_anomalous=s.n_anomalous, by_status=s.by_status,
                        generation=generation)


def _one_line(exc: BaseException) -> str:
    """An exception as one line: its type and message, whitespace (a traceback's newlines) collapsed."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _say(logger: logging.Logger | logging.LoggerAdapter, line: str) -> None:
    """A progress line: printed at once (the CLI's output) and logged (a deployment's run log)."""
    print(line, flush=True)
    logger.info(line)


def run_backfill(settings: Settings, depot: str, night_from: str, night_to: str, *, force: bool = False) -> BackfillResult:
    """Run the backfill flow with these settings (the CLI), with the Prefect API settings of :func:`run_night`."""
    from prefect.settings import temporary_settings

    with temporary_settings(updates=ephemeral_run_settings(settings)):
        return backfill(depot=depot, night_from=night_from, night_to=night_to, store=settings.store, model=settings.model,
                        force=force, batch_size=settings.batch_size, second_opinion=settings.second_opinion,
                        device=settings.device)
