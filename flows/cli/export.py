"""``anodet export``: a registry version as an ONNX / OpenVINO (int8) graph, checked against torch on real captures."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from ._common import _settings, _store, json_stdout, setting_default

if TYPE_CHECKING:
    from ._common import Subcommands


def cmd_export(args: argparse.Namespace) -> int:
    """``anodet export``: write the export beside the version and record it (with its checks) in the card."""
    from anodet_core.models._registry import instance_info
    from anodet_core.registry.exports import INT8_MAX_F1_DELTA, Int8Refused, export_key, export_version
    from anodet_core.registry.model_store import load
    from anodet_core.training import prepare_arrays, store_pairs

    settings = _settings(args)
    store = _store(settings)
    export_key(args.format, args.int8)  # a bad combination fails before any data is read
    model, card = load(store, settings.model, "cpu")
    nights = args.nights or store.nights(args.depot)
    if not nights:
        print(f"error: depot {args.depot!r} has no nights in {settings.store}", file=sys.stderr)
        return 2
    pairs = store_pairs(store, args.depot, nights)[: args.samples]
    if not pairs:
        print(f"error: no labelled captures with a history in depot {args.depot!r} nights {nights}", file=sys.stderr)
        return 2
    size = instance_info(model).input_size
    del model
    data = prepare_arrays(store.read_bytes, pairs, size=size, registration=settings.registration)
    note = f"{len(data)} prepared captures of {args.depot} nights {nights[0]}..{nights[-1]}"
    try:
        with json_stdout(args.json):  # NNCF's progress output stays off a --json stdout
            rec = export_version(store, f"{card.name}:{card.version}" if card.version else settings.model, args.format,
                                 int8=args.int8, data=data, data_note=note,
                                 calibration_samples=args.calibration_samples, batch_size=settings.batch_size)
    except Int8Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rec.__dict__))
        return 0
    print(f"{card.name}:{card.version} exported as {rec.key} ({rec.size_bytes / 1e6:.1f} MB, {rec.seconds:.1f} s): "
          f"parity max |export - torch fp32| {rec.parity_max_abs_diff:.2e} on {rec.parity_samples} captures ({note})")
    if rec.int8:
        print(f"int8: pixel F1 at 0.5 {rec.f1_export:.4f} against fp32 {rec.f1_torch:.4f}, change {rec.f1_delta:.4f} "
              f"(limit {INT8_MAX_F1_DELTA}); calibrated on {rec.calibration_samples} captures")
    return 0


def add_parsers(sub: Subcommands) -> None:
    """Register ``export``."""
    e = sub.add_parser("export", help="export a registry version to ONNX or OpenVINO (--int8: NNCF post-training "
                                      "quantization, refused when pixel F1 moves by more than 0.005)")
    e.add_argument("--model", help=f"NAME (its production version) or NAME:VERSION (default {setting_default('model')})")
    e.add_argument("--format", required=True, choices=("onnx", "openvino"), help="graph format")
    e.add_argument("--int8", action="store_true", help="openvino only: int8 by post-training quantization")
    e.add_argument("--depot", default="demo", help="depot whose labelled captures check (and calibrate) the export")
    e.add_argument("--nights", nargs="+", help="nights of --depot to use (default: all)")
    e.add_argument("--samples", type=int, default=64, help="prepared captures for the parity check and the int8 guard")
    e.add_argument("--calibration-samples", type=int, default=32, help="the first N of them calibrate int8")
    e.add_argument("--batch-size", type=int, help=f"captures per forward pass (default {setting_default('batch_size')})")
    e.add_argument("--json", action="store_true", help="print the export record as one JSON object")
    e.set_defaults(func=cmd_export)
