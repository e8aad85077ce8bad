"""``anodet serve`` and ``anodet retrain``: the scheduled Prefect deployments and the retraining they run."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ._common import _json_object, _settings

if TYPE_CHECKING:
    from ._common import Subcommands


def cmd_serve(args: argparse.Namespace) -> int:
    """``anodet serve``: serve the nightly and retraining deployments on their schedules."""
    from flows.deployments import build_deployments, plan

    planned, kept_out = plan(_settings(args))
    for s in planned:
        note = " [bench data]" if s.bench else ""
        print(f"depot {s.depot}{note}: nightly '{s.nightly_cron}', retrain '{s.retrain_cron}' ({s.timezone})")
    for depot in kept_out:
        print(f"not served: bench depot {depot} (generated bench data beside real depots; ANODET_DEPOTS lists it "
              "to serve it)")
    if args.dry_run:
        return 0
    from prefect import serve

    serve(*build_deployments(planned))  # runs until interrupted; each run uses ANODET_DASK_ADDRESS or a LocalCluster
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    """``anodet retrain``: train a candidate and promote it only if it beats production."""
    from flows.retrain import retrain

    settings = _settings(args)
    overrides = _json_object(args.overrides, "--overrides") or None
    out = retrain(depot=args.depot, store=settings.store, model=args.name, preset=args.preset, overrides=overrides,
                  holdout_nights=args.holdout_nights, epochs=args.epochs, max_minutes=args.max_minutes, lr=args.lr,
                  seed=args.seed, margin=args.margin)
    print(f"{out['name']}:{out['candidate_version']} {'promoted' if out['promoted'] else 'not promoted'}: {out['reason']}")
    return 0


def add_parsers(sub: Subcommands) -> None:
    """Register ``serve`` and ``retrain``."""
    sv = sub.add_parser("serve", help="serve the nightly and retraining deployments on their schedules (Prefect)")
    sv.add_argument("--dry-run", action="store_true", help="print the schedules and exit")
    sv.set_defaults(func=cmd_serve)

    rt = sub.add_parser("retrain", help="train a candidate and promote it only if it beats production on held-out nights")
    rt.add_argument("--depot", required=True)
    rt.add_argument("--name", default="anodfdnet")
    rt.add_argument("--preset", default="lite")
    rt.add_argument("--overrides", help="JSON of config overrides")
    rt.add_argument("--holdout-nights", type=int, default=1)
    rt.add_argument("--epochs", type=int, default=40)
    rt.add_argument("--max-minutes", type=float, default=30.0)
    rt.add_argument("--lr", type=float, default=2e-4)
    rt.add_argument("--seed", type=int, default=0)
    rt.add_argument("--margin", type=float, default=0.01, help="required F1 gain over production")
    rt.set_defaults(func=cmd_retrain)
