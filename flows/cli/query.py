"""``anodet query``: SQL (DuckDB) over the nightly reports."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ._common import _settings, _store

if TYPE_CHECKING:
    from ._common import Subcommands


def cmd_query(args: argparse.Namespace) -> int:
    """``anodet query``: run SQL over the reports and print the rows."""
    from anodet_core.store.query import run_query

    settings = _settings(args)
    df = run_query(_store(settings), args.sql)
    if args.format == "csv":
        df.to_csv(sys.stdout, index=False)
    elif args.format == "json":
        print(df.to_json(orient="records", date_format="iso"))
    else:
        import pandas as pd

        with pd.option_context("display.max_rows", args.max_rows, "display.max_columns", 50, "display.width", 200):
            print(df.to_string(index=False) if len(df) else "(no rows)")
    return 0


def add_parsers(sub: Subcommands) -> None:
    """Register ``query``."""
    q = sub.add_parser("query", help="SQL (DuckDB) over the reports: tables `captures` and `findings`",
                       description="SQL (DuckDB) over the reports, read-only: tables `captures` and `findings`. A query "
                                   "that reaches for anything else (COPY ... TO, read_csv or read_parquet of a file, "
                                   "ATTACH, INSTALL/LOAD, SET or a PRAGMA that changes a setting) is refused with a "
                                   "one-line error, exit status 2.")
    q.add_argument("sql")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table")
    q.add_argument("--max-rows", type=int, default=200)
    q.set_defaults(func=cmd_query)
