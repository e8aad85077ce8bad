"""Exported inference graphs of registry versions: written beside the version, recorded (with their checks) in its card.

``anodet export --model NAME[:VERSION] --format onnx|openvino [--int8]`` lands here. Each export is checked
against the torch model on real prepared captures before anything is written: the parity figure is the largest
absolute difference of the outputs (maps; single-image models: maps and scores) over all of them. An int8 export
(OpenVINO through NNCF post-training quantization, calibrated on captures from the store) is also scored on the
labelled pairs, and refused (:class:`Int8Refused`, nothing written) when its pixel F1 at 0.5 moves by more than
:data:`INT8_MAX_F1_DELTA` from the torch fp32 F1. int8 tries the faster deploy form first (the Transformer as 1x1
convolutions, :mod:`anodet_core.export.deploy`) and falls back to the Transformer as it is when that form fails the
guard (:func:`quantize_guarded`). The card's ``extra["exports"]`` maps each export key to its
:class:`ExportRecord`; the files are ``models/<name>/versions/<version>/exports/<key>/`` (:meth:`Store.model_export_rel`).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ..export.graph import FORMATS, Runner, export_graph, load_runner, quantize_openvino
from ..models._registry import ModelKind, instance_info
from ..store.layout import Store
from .model_store import PACKAGED_VERSION, ModelCard, load, update_card

__all__ = ["EXPORT_KEYS", "INT8_MAX_F1_DELTA", "ExportRecord", "Int8Refused", "check_export", "export_key", "quantize_guarded",
           "export_version", "exports_of", "load_export", "model_outputs", "pixel_f1"]

EXPORT_KEYS: tuple[str, ...] = ("onnx", "openvino", "openvino-int8")
INT8_MAX_F1_DELTA: float = 0.005
"""An int8 export is refused when its pixel F1 (threshold 0.5, labelled pairs) differs from fp32 torch's by more."""


class Int8Refused(ValueError):
    """The int8 graph's F1 on labelled pairs moved by more than :data:`INT8_MAX_F1_DELTA`; nothing was written."""


@dataclass
class ExportRecord:
    """One export of a version, as its card records it."""

    key: str  # onnx | openvino | openvino-int8
    format: str  # onnx | openvino
    int8: bool
    files: list[str]
    size_bytes: int
    created_at: str
    seconds: float  # conversion (+ quantization) wall time
    parity_max_abs_diff: float  # largest |export - torch fp32| over the check inputs' outputs
    parity_samples: int
    data: str  # where the check (and calibration) inputs came from
    f1_torch: float | None = None  # int8, paired: pixel F1 at 0.5 on the labelled pairs
    f1_export: float | None = None
    f1_delta: float | None = None
    calibration_samples: int = 0
    channels_first_transformer: bool = False  # int8: the faster deploy form passed the guard (export.deploy)


def export_key(fmt: str, int8: bool) -> str:
    """The registry key of an export: ``onnx``, ``openvino`` or ``openvino-int8``; ValueError for int8 ONNX."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if int8 and fmt != "openvino":
        raise ValueError("int8 is made by NNCF on an OpenVINO graph: use --format openvino --int8")
    return f"{fmt}-int8" if int8 else fmt


def exports_of(card: ModelCard) -> dict[str, ExportRecord]:
    """The exports a card records, by key."""
    fields = ExportRecord.__dataclass_fields__
    return {k: ExportRecord(**{f: v for f, v in rec.items() if f in fields})
            for k, rec in dict(card.extra.get("exports", {})).items()}


def _inputs(model: torch.nn.Module, data: Any, sl: slice) -> list[torch.Tensor]:
    from ..scoring.predictor import model_input

    if instance_info(model).kind is ModelKind.PAIRED:
        return [model_input(data.cur[sl], model, "cpu"), model_input(data.his[sl], model, "cpu")]
    return [model_input(data.cur[sl], model, "cpu")]


@torch.inference_mode()
def model_outputs(model: torch.nn.Module, inputs: list[torch.Tensor]) -> list[np.ndarray]:
    """The torch fp32 outputs the exported graph reproduces: the map; single-image models (score, map)."""
    if instance_info(model).kind is ModelKind.PAIRED:
        return [model(*inputs).float().numpy()]
    score, amap = model.score_and_map(*inputs, maps=True)  # type: ignore[operator]
    return [score.float().numpy(), amap.float().numpy()]


def pixel_f1(maps: list[np.ndarray], masks: np.ndarray) -> float:
    """Pixel F1 at 0.5 (the papers' micro count) of (B, 1, H, W) maps against uint8 {0,1} masks (N, H, W)."""
    from ..evaluation.metrics import PixelMetrics

    pm = PixelMetrics(threshold=0.5)
    s = 0
    for m in maps:
        pm.update(m[:, 0], masks[s : s + len(m)])
        s += len(m)
    return float(pm.compute()["f1"])


def check_export(model: torch.nn.Module, runner: Runner, data: Any, batch_size: int = 8
                 ) -> tuple[float, list[np.ndarray], list[np.ndarray]]:
    """(max |runner - torch| over every output of every batch, torch maps, export maps) on ``data``."""
    worst = 0.0
    ref_maps: list[np.ndarray] = []
    out_maps: list[np.ndarray] = []
    for s in range(0, len(data), batch_size):
        x = _inputs(model, data, slice(s, s + batch_size))
        ref = model_outputs(model, x)
        out = runner(*[t.numpy() for t in x])
        if len(out) != len(ref) or any(o.shape != r.shape for o, r in zip(out, ref)):
            raise RuntimeError(f"the export's outputs {[o.shape for o in out]} do not match torch's {[r.shape for r in ref]}")
        worst = max(worst, *(float(np.abs(o - r).max()) for o, r in zip(out, ref)))
        ref_maps.append(ref[-1])
        out_maps.append(out[-1])
    return worst, ref_maps, out_maps


def quantize_guarded(model: torch.nn.Module, data: Any, data_note: str, calibration_samples: int = 32,
                     batch_size: int = 8) -> tuple[dict[str, bytes], bool, tuple[float, float], float]:
    """The OpenVINO int8 graph of a paired model that passes the F1 guard on ``data`` (labelled prepared pairs; the
    first ``calibration_samples`` calibrate): (files, whether it is the channels-first deploy form, (torch F1, int8
    F1), parity). The channels-first form runs the paper preset's Transformer on int8 convolutions (AVX2: about
    1.4x the int8 graph with the Transformer as it is), but quantized that way the production model lost 0.12 F1
    on 96 bench pairs; the guard decides. Raises :class:`Int8Refused` when neither form passes."""
    if not np.asarray(data.mask).any():
        raise Int8Refused(f"the int8 guard needs labelled anomalous pairs (masks with anomalous pixels): none in {data_note}")
    n_cal = min(len(data), calibration_samples)
    example = _inputs(model, data, slice(0, min(len(data), batch_size)))
    calibration = [[t.numpy() for t in _inputs(model, data, slice(s, min(n_cal, s + batch_size)))]
                   for s in range(0, n_cal, batch_size)]  # once for both forms
    reasons = []
    for cf in (True, False):
        files = quantize_openvino(export_graph(model, "openvino", example, channels_first_transformer=cf), calibration)
        worst, ref_maps, out_maps = check_export(model, load_runner("openvino", files), data, batch_size)
        f1_torch, f1_int8 = pixel_f1(ref_maps, data.mask), pixel_f1(out_maps, data.mask)
        if abs(f1_int8 - f1_torch) <= INT8_MAX_F1_DELTA:
            return files, cf, (f1_torch, f1_int8), worst
        reasons.append(f"{'channels-first' if cf else 'as-is'} Transformer {f1_int8:.4f} (change {abs(f1_int8 - f1_torch):.4f})")
    raise Int8Refused(f"int8 refused: pixel F1 against fp32 {f1_torch:.4f} on {len(data)} pairs ({data_note}): "
                      + ", ".join(reasons) + f"; both changes > {INT8_MAX_F1_DELTA}")


def export_version(store: Store, ref: str, fmt: str, *, int8: bool = False, data: Any, data_note: str,
                   calibration_samples: int = 32, batch_size: int = 8) -> ExportRecord:
    """Export a stored version (``NAME`` = production, or ``NAME:VERSION``) and record it in its card.

    ``data``: prepared captures at the model's input size (:class:`~anodet_core.training.data.PairArrays`; masks
    are used for the int8 guard of paired models), the first ``calibration_samples`` of them calibrate int8.
    Raises :class:`Int8Refused` when the int8 guard fails, ValueError for a shipped base model (it is not in
    the store: train or promote a version first) or an empty ``data``; nothing is written in either case.
    """
    key = export_key(fmt, int8)
    model, card = load(store, ref, "cpu")
    if not card.version or card.version == PACKAGED_VERSION:
        raise ValueError(f"{ref} is the base model shipped in the package, not a store version: export a trained "
                         "version (NAME:VERSION)")
    paired = instance_info(model).kind is ModelKind.PAIRED
    if int8 and not paired:
        raise ValueError("int8 export is for paired models: its guard is the pixel F1 on labelled pairs")
    if len(data) == 0:
        raise ValueError("export needs at least one prepared capture to check the graph against torch")
    t0 = time.perf_counter()
    n_cal, cf, f1s = 0, False, (0.0, 0.0)
    if int8:
        n_cal = min(len(data), calibration_samples)
        files, cf, f1s, worst = quantize_guarded(model, data, data_note, n_cal, batch_size)
    else:
        files = export_graph(model, fmt, _inputs(model, data, slice(0, min(len(data), batch_size))))
        worst = check_export(model, load_runner(fmt, files), data, batch_size)[0]
    seconds = time.perf_counter() - t0
    rec = ExportRecord(key=key, format=fmt, int8=int8, files=sorted(files), size_bytes=sum(map(len, files.values())),
                       created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), seconds=round(seconds, 2),
                       parity_max_abs_diff=worst, parity_samples=len(data), data=data_note, calibration_samples=n_cal,
                       channels_first_transformer=cf)
    if int8:
        rec.f1_torch, rec.f1_export = f1s
        rec.f1_delta = abs(f1s[1] - f1s[0])
    rel = store.model_export_rel(card.name, card.version, key)
    for fname, blob in files.items():
        store.write_bytes(f"{rel}/{fname}", blob)
    card.extra = {**card.extra, "exports": {**dict(card.extra.get("exports", {})), key: asdict(rec)}}
    update_card(store, card)  # the card last: a recorded export is always complete
    return rec


def load_export(store: Store, card: ModelCard, key: str, threads: int | None = None) -> Runner:
    """A runner for an export recorded in ``card``; LookupError when the card has no such export."""
    recs = exports_of(card)
    if key not in recs:
        have = ", ".join(sorted(recs)) or "none"
        raise LookupError(f"{card.name}:{card.version} has no {key} export (has: {have}); run anodet export")
    rel = store.model_export_rel(card.name, card.version, key)
    return load_runner(recs[key].format, {f: store.read_bytes(f"{rel}/{f}") for f in recs[key].files}, threads)
