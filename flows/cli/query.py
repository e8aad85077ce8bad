"""``anodet query``: SQL (DuckDB) over the nightly reports, or one of the named questions."""

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
    from anodet_core.store.questions import question_sql

    settings = _settings(args)
    if (args.sql is None) == (args.question is None):
        raise ValueError("give either SQL or one named question (--top-regions, --trend, --false-alarms, --night-summary)")
    if args.question is not None:
        where = {"depot": args.depot, "train_id": args.train, "region_id": args.region}
        if args.question == "region_trend" and args.region is None:
            raise ValueError("--trend needs --region R")
        sql, params = question_sql(args.question, where)
    else:
        if any(v is not None for v in (args.depot, args.train, args.region)):
            raise ValueError("--depot, --train and --region filter the named questions; in SQL use a where clause")
        sql, params = args.sql, []
    df = run_query(_store(settings), sql, params)
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
    from anodet_core.store.questions import QUESTIONS

    q = sub.add_parser("query", help="SQL (DuckDB) over the reports, or a named question (--top-regions, --trend, ...)",
                       description="SQL (DuckDB) over the reports, read-only: views `captures`, `findings`, `labels` "
                                   "(ground truth with the latest verdicts over it), `verdicts`, and one view per named "
                                   "question (top_regions, region_trend, false_alarms, night_summary; their SQL is in "
                                   "anodet_core/store/questions.py). A query that reaches for anything else (COPY ... TO, "
                                   "read_csv or read_parquet of a file, ATTACH, INSTALL/LOAD, SET or a PRAGMA that changes "
                                   "a setting) is refused with a one-line error, exit status 2.")
    q.add_argument("sql", nargs="?", help="DuckDB SQL (or give one named question instead)")
    named = q.add_mutually_exclusive_group()
    for flag, view in (("--top-regions", "top_regions"), ("--trend", "region_trend"), ("--false-alarms", "false_alarms"),
                       ("--night-summary", "night_summary")):
        named.add_argument(flag, dest="question", action="store_const", const=view, help=QUESTIONS[view].help)
    q.add_argument("--depot", help="named questions: only this depot")
    q.add_argument("--train", help="named questions with regions (--top-regions, --trend): only this train")
    q.add_argument("--region", help="--trend: the region (required); --top-regions: only this region")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table")
    q.add_argument("--max-rows", type=int, default=200)
    q.set_defaults(func=cmd_query, question=None)
