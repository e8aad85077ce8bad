"""``anodet run-night`` and ``anodet backfill``: the nightly inspection flow for one depot-night, or for a range of nights."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ._common import _settings, _store

if TYPE_CHECKING:
    from types import FrameType

    from anodet_core.store.layout import Store

    from ._common import Subcommands


def cmd_run_night(args: argparse.Namespace) -> int:
    """``anodet run-night``: run the nightly inspection flow for one depot-night and print its summary; 130 when
    interrupted (Ctrl-C), saying whether the night was published."""
    from anodet_core.store.names import check_night
    from anodet_core.text import printable
    from flows.nightly import run_night

    settings = _settings(args)
    store = _store(settings)
    night = check_night(args.night)
    if not store.exists(store.manifest_rel(args.depot, night)):  # say it plainly before starting Prefect
        raise FileNotFoundError(f"no manifest for depot {args.depot!r} night {night} in {printable(settings.store)}")
    before = _generation(store, args.depot, night)
    try:
        with _sigint_seen() as interrupted:
            summary = run_night(settings, args.depot, night)
    except BaseException:
        if not interrupted:
            raise
        _stop_api_server()
        # a night is published by one write of its commit (anodet_core.store.publish): either it happened or readers
        # still see the night as it was before this run
        after = _generation(store, args.depot, night)
        where = f"depot {printable(args.depot)} night {night}"
        if after is not None and after != before:
            print(f"interrupted after {where} was published", file=sys.stderr)
        else:
            print(f"interrupted: {where} not published ({'its previous report is unchanged' if before else 'no report'}); "
                  "rerun the same command to run it again", file=sys.stderr)
        return 130
    print(summary.markdown())  # its ids and messages are escaped (NightSummary.markdown)
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    """``anodet backfill``: the nightly flow over a depot's nights in a range; 1 when a night failed, 130 when interrupted."""
    from anodet_core.text import printable
    from flows.backfill import FAILED, backfill_nights, pin_model, run_backfill

    settings = _settings(args)
    store = _store(settings)
    nights = backfill_nights(store, args.depot, args.night_from, args.night_to)
    if not nights:  # say it plainly before starting Prefect
        raise FileNotFoundError(f"no manifest for depot {args.depot!r} from {args.night_from} to {args.night_to} in "
                                f"{printable(settings.store)}")
    ref, _, _ = pin_model(store, settings.model)  # NAME's production version, once: every night uses it
    try:
        with _sigint_seen() as interrupted:
            result = run_backfill(settings.with_(model=ref), args.depot, args.night_from, args.night_to, force=args.force)
    except BaseException:
        if not interrupted:
            raise
        _stop_api_server()
        # published nights are complete and a half-run one is invisible: the same command resumes
        print(f"interrupted; rerun the same command to resume (nights reported with {printable(ref)} are skipped)")
        return 130
    return 1 if result.count(FAILED) else 0


@contextlib.contextmanager
def _sigint_seen() -> Iterator[list[int]]:
    """A list that gets an entry when SIGINT (Ctrl-C) arrives in the block, which then raises KeyboardInterrupt as usual.

    The exception may not reach the command as KeyboardInterrupt (raised inside a pydantic serializer of Prefect's,
    it came out as a PydanticSerializationError, a ValueError); the list says that the run was interrupted.
    """
    seen: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers (and gets signals)
        yield seen
        return

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        seen.append(signum)
        signal.default_int_handler(signum, frame)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


def _generation(store: Store, depot: str, night: str) -> str | None:
    """The night's committed generation, None when none (or its commit cannot be read: the run replaces it)."""
    from anodet_core.store.publish import read_commit

    try:
        commit = read_commit(store, depot, night)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return commit.generation if commit else None


def _stop_api_server() -> None:
    """After a Ctrl-C: stop the run's ephemeral API server (:mod:`flows.api_server`) now, before the message."""
    if "flows.api_server" in sys.modules:  # started one (no PREFECT_API_URL)
        sys.modules["flows.api_server"].stop()


def _run_flags(p: argparse.ArgumentParser) -> None:
    """The settings flags every command that runs the nightly flow takes."""
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--backend", choices=("auto", "torch", "openvino", "onnxruntime"),
                   help="paired models' inference engine (env ANODET_BACKEND, default auto: on a CPU the "
                        "fastest of torch and the version's exports, measured)")
    p.add_argument("--second-opinion", action="store_true", default=None,
                   help="also score captures with history by their region's single-image model (report columns "
                        "second_*; env ANODET_SECOND_OPINION)")


def add_parsers(sub: Subcommands) -> None:
    """Register ``run-night`` and ``backfill``."""
    r = sub.add_parser("run-night", help="run the nightly inspection flow for one depot-night")
    r.add_argument("--depot", required=True)
    r.add_argument("--night", required=True, help="YYYY-MM-DD")
    r.add_argument("--model", help="model reference: NAME (its production version), NAME:VERSION or a local folder")
    _run_flags(r)
    r.set_defaults(func=cmd_run_night)

    b = sub.add_parser("backfill", help="run the nightly flow for every night of a depot with a manifest in a range, "
                                        "oldest first, skipping nights already reported with the same model version")
    b.add_argument("--depot", required=True)
    b.add_argument("--from", dest="night_from", required=True, metavar="YYYY-MM-DD", help="first night (inclusive)")
    b.add_argument("--to", dest="night_to", required=True, metavar="YYYY-MM-DD", help="last night (inclusive)")
    b.add_argument("--model", help="model reference: NAME (its production version, resolved once at the start), "
                                   "NAME:VERSION or a local folder")
    b.add_argument("--force", action="store_true", help="rerun nights already reported with this model version")
    _run_flags(b)
    b.set_defaults(func=cmd_backfill)
