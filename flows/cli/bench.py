"""``anodet bench``: throughput, stage breakdown and memory of the nightly pipeline (flows.bench)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from ._common import _settings, setting_default

if TYPE_CHECKING:
    from ._common import Subcommands


def cmd_bench(args: argparse.Namespace) -> int:
    """``anodet bench``: model-only and end-to-end throughput, stage breakdown and memory."""
    from flows.bench import run_bench

    settings = _settings(args)
    # with --json, stdout carries the JSON object alone; the narrative goes to stderr
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    out = run_bench(settings, captures=args.captures, batch_size=settings.batch_size, repeats=args.repeats,
                    e2e_runs=args.e2e_runs, log=log)
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
    return 0


def add_parsers(sub: Subcommands) -> None:
    """Register ``bench``."""
    b = sub.add_parser("bench", help="model-only (fp32 vs fast path) and end-to-end throughput, stage breakdown, memory")
    b.add_argument("--json", action="store_true", help="end with one JSON object of the key figures")
    b.add_argument("--captures", type=int, default=256, help="size of the generated 1920x1200 bench night")
    b.add_argument("--batch-size", type=int, help=f"pairs per forward pass (default {setting_default('batch_size')})")
    b.add_argument("--repeats", type=int, default=8, help="timed model-only batches per path and measurement")
    b.add_argument("--e2e-runs", type=int, default=3,
                   help="timed nightly runs after the warm-up, each followed by a model-only measurement")
    b.add_argument("--model", help="model whose fp32-vs-fast F1 difference is measured "
                                   f"(default: production {setting_default('model')})")
    b.add_argument("--device", help="auto | cpu | cuda")
    b.set_defaults(func=cmd_bench)
