"""``anodet run-night``: the nightly inspection flow for one depot-night."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ._common import _settings, _store

if TYPE_CHECKING:
    from ._common import Subcommands


def cmd_run_night(args: argparse.Namespace) -> int:
    """``anodet run-night``: run the nightly inspection flow for one depot-night and print its summary."""
    from anodet_core.store.names import check_night
    from anodet_core.text import printable
    from flows.nightly import run_night

    settings = _settings(args)
    store = _store(settings)
    night = check_night(args.night)
    if not store.exists(store.manifest_rel(args.depot, night)):  # say it plainly before starting Prefect
        raise FileNotFoundError(f"no manifest for depot {args.depot!r} night {night} in {printable(settings.store)}")
    summary = run_night(settings, args.depot, night)
    print(summary.markdown())  # its ids and messages are escaped (NightSummary.markdown)
    return 0


def add_parsers(sub: Subcommands) -> None:
    """Register ``run-night``."""
    r = sub.add_parser("run-night", help="run the nightly inspection flow for one depot-night")
    r.add_argument("--depot", required=True)
    r.add_argument("--night", required=True, help="YYYY-MM-DD")
    r.add_argument("--model", help="model reference: NAME (its production version), NAME:VERSION or a local folder")
    r.add_argument("--batch-size", type=int)
    r.add_argument("--device", help="auto | cpu | cuda")
    r.add_argument("--second-opinion", action="store_true", default=None,
                   help="also score captures with history by their region's single-image model (report columns "
                        "second_*; env ANODET_SECOND_OPINION)")
    r.set_defaults(func=cmd_run_night)
