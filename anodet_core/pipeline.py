"""Scoring one batch of a night: read, verify, register, infer, write maps, build report rows.

This is what one Prefect task runs inside one Dask worker. The model is loaded once per worker process
and kept (keyed by store, name, version, device and precision).
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from .config import Settings, resolve_device
from .history import PairJob
from .imaging import ImageError, sha256
from .inference import Predictor, find_regions, to_native
from .layout import (
    DECISION_ANOMALOUS,
    DECISION_NORMAL,
    STATUS_ERROR,
    STATUS_NO_HISTORY,
    STATUS_OK,
    STATUS_REGISTRATION_FAILED,
    Store,
)
from .maps import dequantize, open_night_maps, quantize, write_map
from .model_store import ModelCard, load
from .preprocess import PreparedPair, prepare_pair

_MODELS: dict[tuple, tuple[Predictor, ModelCard]] = {}
_LOCK = threading.Lock()


def available_cores() -> int:
    """Cores this process may use: CPU affinity, capped by a cgroup v2 quota (containers see the host's count)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def worker_threads(settings: Settings) -> int:
    """Torch threads for this worker: explicit setting, else the cores it may use shared among the workers."""
    if settings.torch_threads > 0:
        return settings.torch_threads
    return max(1, available_cores() // max(1, settings.dask_workers))


def get_predictor(store: Store, model_ref: str, settings: Settings) -> tuple[Predictor, ModelCard]:
    """Load a model once per process (Dask workers live across tasks and nights)."""
    device = resolve_device(settings.device)
    key = (store.root, model_ref, device, settings.fast)
    with _LOCK:
        if key not in _MODELS:
            torch.set_num_threads(worker_threads(settings))
            model, card = load(store, model_ref, device)
            _MODELS[key] = (Predictor(model, device, fast=settings.fast), card)
        return _MODELS[key]


@dataclass
class BatchResult:
    captures: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)


def _base_row(job: PairJob, card: ModelCard | None, run_id: str) -> dict[str, Any]:
    c = job.capture
    return {
        "capture_id": c["capture_id"],
        "train_id": c["train_id"],
        "car": int(c["car"]),
        "region_id": c["region_id"],
        "captured_at": c["captured_at"],
        "uri": c["uri"],
        "history_source": job.history_source,
        "history_capture_id": job.history_capture_id,
        "history_uri": job.history_uri,
        "model_name": card.name if card else None,
        "model_version": card.version if card else None,
        "run_id": run_id,
        "map_index": job.index,
    }


def _prepare(store: Store, job: PairJob, settings: Settings) -> PreparedPair | str:
    """Read and align one pair; a string is the error that keeps the capture from being scored."""
    try:
        cur_bytes = store.read_bytes(job.capture["uri"])
    except (FileNotFoundError, OSError) as exc:
        return f"cannot read capture {job.capture['uri']}: {exc}"
    expected = job.capture.get("sha256")
    if expected and sha256(cur_bytes) != expected:
        return f"sha256 mismatch for {job.capture['uri']}: the file changed after the manifest was written"
    try:
        his_bytes = store.read_bytes(job.history_uri)  # type: ignore[arg-type]
    except (FileNotFoundError, OSError) as exc:
        return f"cannot read history {job.history_uri}: {exc}"
    try:
        return prepare_pair(cur_bytes, his_bytes, registration=settings.registration)
    except (ImageError, ValueError) as exc:
        return str(exc)


def _native_map(score: torch.Tensor, size: tuple[int, int], dtype: str) -> np.ndarray:
    """Model-resolution map -> stored map at the capture's native (width, height).

    uint8 maps are quantized at model resolution and upsampled by Pillow's bilinear resize in uint8: 3-4x
    cheaper than a float upsample of ~2.3 Mpx per capture, and within one quantization step of it.
    """
    if dtype == "uint8":
        q = quantize(score.numpy(), "uint8")
        return np.asarray(Image.fromarray(q).resize(size, Image.Resampling.BILINEAR))
    return quantize(to_native(score, size), dtype)


def _finish(group: Any, job: PairJob, prep: PreparedPair, score: torch.Tensor, settings: Settings) -> tuple[dict[str, Any], list]:
    """Native map, figures and findings of one scored pair; writes its Zarr row. Runs in the writer thread."""
    t1 = time.perf_counter()
    thr = float(settings.threshold)  # type: ignore[arg-type]
    stored = _native_map(score, prep.native_size, str(group["maps"].dtype))
    write_map(group, job.index, stored)
    # report figures come from the stored (quantized) map, so the report and the Zarr agree exactly
    peak = float(dequantize(np.asarray(stored.max()).reshape(1))[0])
    if peak > thr:  # the rare case pays for the float map and the labelling
        native = dequantize(stored)
        finds = find_regions(native, thr, settings.min_finding_area)
        above = int((native > thr).sum())
    else:
        finds, above = [], 0
    mean = float(stored.mean(dtype=np.float64)) / (255.0 if stored.dtype == np.uint8 else 1.0)
    reg = prep.registration
    figures = dict(
        status=STATUS_OK if reg.ok else STATUS_REGISTRATION_FAILED,
        decision=DECISION_ANOMALOUS if finds else DECISION_NORMAL,
        threshold=thr,
        reg_method=reg.method,
        reg_ok=reg.ok,
        reg_inliers=reg.inliers,
        reg_residual_px=reg.residual_px,
        reg_ncc_before=reg.ncc_before,
        reg_ncc_after=reg.ncc_after,
        score_max=peak,
        score_mean=mean,
        anomalous_area_px=above,
        anomalous_area_frac=above / stored.size,
        n_findings=len(finds),
        t_decode_ms=prep.t_decode_ms,
        t_register_ms=prep.t_register_ms,
        t_write_ms=(time.perf_counter() - t1) * 1e3,
    )
    return figures, finds


def process_batch(
    store: Store,
    depot: str,
    night: str,
    jobs: list[PairJob],
    model_ref: str,
    settings: Settings,
    run_id: str = "",
) -> BatchResult:
    """Score a batch of pairs and write their maps; every job yields exactly one capture row.

    Three stages overlap: a reader thread decodes and registers pairs ahead, the calling thread runs the model
    on sub-batches of ``settings.batch_size``, a writer thread upsamples, measures and writes the maps (Pillow,
    zstd and most of NumPy release the GIL). ``settings.threshold`` must be set (the flow passes the plan's).
    """
    if settings.threshold is None:
        raise ValueError("process_batch needs an explicit threshold (see NightPlan.threshold)")
    predictor, card = get_predictor(store, model_ref, settings)
    result = BatchResult()
    scorable = [j for j in jobs if j.history_uri]
    for job in jobs:
        if not job.history_uri:
            result.captures.append({**_base_row(job, card, run_id), "status": STATUS_NO_HISTORY})
    if not scorable:
        return result
    group = open_night_maps(store, depot, night, writable=True)
    map_uri = store.url(store.maps_rel(depot, night))
    pending: list[tuple[PairJob, PreparedPair]] = []
    written: list[tuple[PairJob, float, Any]] = []
    with ThreadPoolExecutor(1, thread_name_prefix="anodet-read") as reader, ThreadPoolExecutor(1, thread_name_prefix="anodet-write") as writer:
        ahead = [reader.submit(_prepare, store, j, settings) for j in scorable]  # runs ahead of the model

        def infer() -> None:
            t0 = time.perf_counter()
            scores = predictor.predict(np.stack([p.cur for _, p in pending]), np.stack([p.his for _, p in pending])).cpu()
            t_infer = (time.perf_counter() - t0) * 1e3 / len(pending)
            for k, (job, prep) in enumerate(pending):
                written.append((job, t_infer, writer.submit(_finish, group, job, prep, scores[k], settings)))
            pending.clear()

        for job, fut in zip(scorable, ahead):
            prep = fut.result()
            if isinstance(prep, str):
                result.captures.append({**_base_row(job, card, run_id), "status": STATUS_ERROR, "error": prep})
                continue
            pending.append((job, prep))
            if len(pending) >= settings.batch_size:
                infer()
        if pending:
            infer()
        processed_at = dt.datetime.now(dt.timezone.utc)
        for job, t_infer, fut in written:
            figures, finds = fut.result()
            row = {**_base_row(job, card, run_id), **figures, "t_infer_ms": t_infer, "map_uri": map_uri, "processed_at": processed_at}
            result.captures.append(row)
            for i, f in enumerate(finds):
                result.findings.append(
                    {
                        "capture_id": row["capture_id"],
                        "finding_id": i,
                        "train_id": row["train_id"],
                        "car": row["car"],
                        "region_id": row["region_id"],
                        "x0": f.x0, "y0": f.y0, "x1": f.x1, "y1": f.y1,
                        "area_px": f.area_px,
                        "peak_score": f.peak_score,
                        "mean_score": f.mean_score,
                        "model_name": card.name,
                        "model_version": card.version,
                        "run_id": run_id,
                    }
                )
    return result
