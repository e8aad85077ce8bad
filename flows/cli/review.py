"""``anodet label`` and ``anodet report``: the analysts' morning (verdicts on captures, a night's HTML page)."""

from __future__ import annotations

import argparse
import getpass
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ._common import _settings, _store

if TYPE_CHECKING:
    from ._common import Subcommands


def cmd_label(args: argparse.Namespace) -> int:
    """``anodet label``: record an analyst's verdict on a capture (append-only; a later one supersedes)."""
    from anodet_core.store.verdicts import record_verdict

    mask = Path(args.mask).read_bytes() if args.mask else None
    rec = record_verdict(_store(_settings(args)), args.capture, args.verdict, by=args.by, mask=mask,
                         anomaly_type=args.type, note=args.note, depot=args.depot, night=args.night)
    extra = f", mask {rec.row.mask_uri}" if rec.row.mask_uri else ""
    print(f"verdict {rec.row.verdict} on {rec.row.capture_id} (depot {rec.depot}, night {rec.night}) by {rec.row.verdict_by}"
          f"{extra}: {rec.url}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``anodet report``: a published night's self-contained HTML page, to the store or to ``--out``."""
    from anodet_core.reporting.night_page import write_night_page

    settings = _settings(args)
    where = write_night_page(_store(settings), args.depot, args.night, args.out, max_findings=args.max_findings,
                             registration=settings.registration, allowed_uri_prefixes=settings.allowed_uri_prefixes)
    print(f"night report: {where}")
    return 0


def _default_analyst() -> str:
    return os.environ.get("ANODET_ANALYST") or getpass.getuser()


def add_parsers(sub: Subcommands) -> None:
    """Register ``label`` and ``report``."""
    from anodet_core.store.schemas import ANOMALY_TYPES, Verdict

    lab = sub.add_parser(
        "label", help="record an analyst's verdict on a capture (used by retraining and history resolution)",
        description="Record a verdict on one capture under the store's labels area, append-only: every verdict is its "
                    "own file, a later one supersedes an earlier one, nothing is overwritten. Retraining reads verdicts "
                    "as labels; a capture confirmed normal may serve as history, one confirmed anomalous never does.")
    lab.add_argument("--capture", required=True, help="capture id (depot and night are looked up in the reports)")
    lab.add_argument("--verdict", required=True, choices=[v.value for v in Verdict])
    lab.add_argument("--mask", help="image file of the capture's native size, white = anomaly (anomaly verdicts only)")
    lab.add_argument("--type", choices=ANOMALY_TYPES, help="kind of anomaly (anomaly verdicts only)")
    lab.add_argument("--note", help="free text kept with the verdict")
    lab.add_argument("--by", default=_default_analyst(), help="who gives the verdict (env ANODET_ANALYST, else the user name)")
    lab.add_argument("--depot", help="the capture's depot, when its id is in several nights or in none's report yet")
    lab.add_argument("--night", help="the capture's night (YYYY-MM-DD), with --depot")
    lab.set_defaults(func=cmd_label)

    from anodet_core.reporting import MAX_FINDINGS

    rep = sub.add_parser(
        "report", help="a night's report as one self-contained HTML page (pictures embedded)",
        description="Write a published night's HTML page: summary, plots (PNG beside the page), one card per finding "
                    "ranked by peak score (current, registered history, anomaly map, outlined findings), the captures "
                    "that failed with their status and message, and the night's verdicts. Default: into the store "
                    "(pages/<depot>/<night>/night.html, where the nightly flow also writes it).")
    rep.add_argument("--depot", required=True)
    rep.add_argument("--night", required=True, help="YYYY-MM-DD")
    rep.add_argument("--out", help="a local FILE.html instead of the store (plots beside it, named FILE-*.png)")
    rep.add_argument("--max-findings", type=int, default=MAX_FINDINGS, help=f"finding cards at most (default {MAX_FINDINGS})")
    rep.set_defaults(func=cmd_report)
