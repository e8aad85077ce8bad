"""``anodet`` command line: demo, data, training, nightly runs, prediction and queries.

Every option has an ``ANODET_*`` environment default (see anodet_core.config.Settings); flags win.
Each command group's module holds its ``cmd_*`` functions beside the ``add_parsers`` that declares their flags.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import tasks._env  # noqa: F401  (Prefect defaults before anything imports prefect)
from anodet_core.allocator import keep_freed_memory

from . import bench, data, deploy, evaluate, export, night, query, review, train
from ._common import SINGLE_IMAGE_ARCHS, setting_default
from .bench import cmd_bench
from .data import cmd_demo, cmd_demo_data
from .deploy import cmd_retrain, cmd_serve
from .evaluate import EVAL_KEYS, SINGLE_IMAGE_EVAL_KEYS, cmd_compare, cmd_evaluate, cmd_predict
from .export import cmd_export
from .night import cmd_backfill, cmd_run_night
from .query import cmd_query
from .review import cmd_label, cmd_report
from .train import PAIRED_LR, cmd_pretrain, cmd_train

__all__ = [
    "EVAL_KEYS", "PAIRED_LR", "SINGLE_IMAGE_ARCHS", "SINGLE_IMAGE_EVAL_KEYS", "build_parser", "cmd_backfill", "cmd_bench", "cmd_compare",
    "cmd_demo", "cmd_demo_data", "cmd_evaluate", "cmd_export", "cmd_label", "cmd_predict", "cmd_pretrain", "cmd_query", "cmd_report", "cmd_retrain",
    "cmd_run_night",
    "cmd_serve", "cmd_train", "main",
]

# in the order ``anodet --help`` lists the commands
_GROUPS = (data, train, night, evaluate, export, bench, deploy, query, review)


def build_parser() -> argparse.ArgumentParser:
    """The ``anodet`` argument parser: ``--store`` on every level, one subcommand per ``cmd_*`` function."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", default=argparse.SUPPRESS,
                        help=f"store root, any fsspec URL (env ANODET_STORE, default {setting_default('store')})")
    p = argparse.ArgumentParser(prog="anodet", description=__doc__.split("\n")[0], parents=[common])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add = sub.add_parser

    def add_parser(name: str, **kw: Any) -> argparse.ArgumentParser:
        return _add(name, parents=[common], **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]
    for group in _GROUPS:
        group.add_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``anodet`` command; its exit status (2 with a one-line error for a missing or bad input)."""
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # before any tensor: the model's large buffers are reused instead of faulted in again
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, LookupError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
