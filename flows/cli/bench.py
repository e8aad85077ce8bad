"""``anodet bench``: throughput, stage breakdown and memory of the nightly pipeline (flows.bench)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from ._common import _settings, json_stdout, setting_default

if TYPE_CHECKING:
    from ._common import Subcommands


def cmd_bench(args: argparse.Namespace) -> int:
    """``anodet bench``: model-only and end-to-end throughput, stage breakdown and memory."""
    from flows.bench import run_bench

    if args.allocator:
        return _bench_allocator(args)
    settings = _settings(args)
    with json_stdout(args.json) as stdout:  # with --json, the narrative goes to stderr
        out = run_bench(settings, captures=args.captures, batch_size=settings.batch_size, repeats=args.repeats,
                        e2e_runs=args.e2e_runs, log=print)
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()), file=stdout)
    return 0


def _bench_allocator(args: argparse.Namespace) -> int:
    """``anodet bench --allocator``: glibc's default allocator against the kept heap, fresh processes side by side."""
    from anodet_core.evaluation.allocator_bench import compare_allocators

    size = args.input_size
    batch = args.batch_size or 4
    with json_stdout(args.json) as stdout:  # with --json, the narrative goes to stderr
        sp = compare_allocators(size=size, batch_size=batch, repeats=args.repeats, rounds=args.e2e_runs)
    print(f"base architecture, fp32 forward at {size}x{size}, batch {batch}, {args.e2e_runs} alternating fresh processes "
        f"a side: glibc defaults {sp.default_pairs_s:.3f} pairs/s ({sp.default_faults_per_pair:.0f} page faults, "
        f"{sp.default_sys_s_per_pair:.2f} s kernel CPU per pair), kept heap {sp.kept_pairs_s:.3f} pairs/s "
        f"({sp.kept_faults_per_pair:.0f} faults, {sp.kept_sys_s_per_pair:.2f} s): x{sp.speedup:.2f}",
        file=sys.stderr if args.json else stdout)
    out = {"allocator_default_pairs_s": round(sp.default_pairs_s, 3), "allocator_kept_pairs_s": round(sp.kept_pairs_s, 3),
           "allocator_speedup": round(sp.speedup, 3)}
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()), file=stdout)
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
    b.add_argument("--backend", choices=("auto", "torch", "openvino", "onnxruntime"),
                   help="paired models' inference engine (env ANODET_BACKEND, default auto: on a CPU the "
                        "fastest of torch and the version's exports, measured)")
    b.add_argument("--allocator", action="store_true",
                   help="instead: glibc's default allocator against the kept heap (anodet_core.allocator), the base "
                        "architecture's fp32 forward in fresh processes side by side (--e2e-runs of them a side, "
                        "--repeats timed batches each)")
    b.add_argument("--input-size", type=int, default=896, help="with --allocator: the input side")
    b.set_defaults(func=cmd_bench)
