"""``anodet bench``: model-only and end-to-end throughput, measured side by side in one run.

(a) paper-preset AnoDFDNet, eager fp32 NCHW (the reference way) and (b) the production fast path, same
process (a Dask worker set up as for the nightly run), alternating; (c) the nightly flow from store to Zarr + Parquet on a generated night of 1920x1200
JPEGs with the paper preset, after a warm-up run of the same night (Prefect server, Dask worker and model load
are not counted); (d) stage breakdown from the report's timing columns and peak resident memory; (e) F1 of
the store's production model with the fast path minus fp32, on the bench night's labels.
"""

from __future__ import annotations

import copy
import resource
import time
from typing import Any, Callable

import numpy as np
import torch

from anodet_core import model_store
from anodet_core.bench import compare_model_paths
from anodet_core.config import Settings, resolve_device
from anodet_core.demo_data import DemoSpec, generate_depot
from anodet_core.inference import Predictor
from anodet_core.layout import Store
from anodet_core.metrics import PixelMetrics
from anodet_core.model_store import ModelCard
from anodet_core.models import create_model
from anodet_core.training import prepare_arrays, store_pairs

BENCH_MODEL = "anodfdnet-bench"  # random-init paper preset: speed does not depend on the weights
BENCH_THRESHOLD = 0.9  # an untrained model scores ~0.5 everywhere; keep findings sparse as in real nights


def _vmhwm_mb() -> float:
    """Peak resident set (VmHWM) of the calling process, MiB; falls back to getrusage off Linux."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _model_speed(settings: Settings, batch_size: int, repeats: int) -> Any:
    """Runs in a Dask worker: the paper preset, fp32 eager against the fast path, same inputs, alternating."""
    from anodet_core.pipeline import worker_threads

    torch.set_num_threads(worker_threads(settings))
    torch.manual_seed(0)
    paper = create_model("anodfdnet", preset="paper").eval()
    device = resolve_device(settings.device)
    return compare_model_paths(paper, copy.deepcopy(paper), device=device, batch_size=batch_size, repeats=repeats)


def _f1_delta(store: Store, depot: str, night: str, model_ref: str, device: str) -> tuple[float | None, str]:
    try:
        model, card = model_store.load(store, model_ref, device)
    except LookupError as exc:
        return None, f"no f1_delta: {exc}"
    pairs = store_pairs(store, depot, [night])
    data = prepare_arrays(store.read_bytes, pairs)
    f1 = {}
    for fast in (False, True):
        pred = Predictor(copy.deepcopy(model), device, fast=fast)
        pm = PixelMetrics(threshold=0.5)
        for s in range(0, len(data), 8):
            pm.update(pred.predict(data.cur[s : s + 8], data.his[s : s + 8]).cpu().numpy(), data.mask[s : s + 8])
        f1[fast] = pm.compute()["f1"]
    return abs(f1[True] - f1[False]), f"{card.name}:{card.version} F1 fp32 {f1[False]:.4f} fast {f1[True]:.4f} on {len(data)} pairs"


def run_bench(
    settings: Settings, *, captures: int = 128, batch_size: int = 8, repeats: int = 5, log: Callable[[str], Any] = print
) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    from flows.cli import run_night
    from flows.runners import local_cluster_kwargs

    store = Store(settings.store, settings.storage_options or None)
    device = resolve_device(settings.device)
    regions = max(1, captures // 4)
    spec = DemoSpec(depot="bench", nights=1, trains=2, cars=2, regions=regions, seed=11)
    if not store.nights(spec.depot):
        log(f"generating the bench night: {spec.trains * spec.cars * spec.regions} captures at {spec.width}x{spec.height}")
        generate_depot(store, spec)
    night = store.nights(spec.depot)[0]
    n_pairs = len(store.read_manifest(spec.depot, night))

    torch.manual_seed(0)
    paper = create_model("anodfdnet", preset="paper").eval()
    if model_store.get_alias(store, BENCH_MODEL) is None:
        card = model_store.save_version(store, paper, ModelCard(name=BENCH_MODEL, arch="anodfdnet", preset="paper",
                                                                threshold=BENCH_THRESHOLD))
        model_store.set_alias(store, BENCH_MODEL, card.version)
    del paper
    run_settings = settings.with_(model=BENCH_MODEL, batch_size=batch_size)
    cluster = LocalCluster(**local_cluster_kwargs(run_settings))
    client = Client(cluster)
    try:
        # (a), (b): model only, inside a worker process configured exactly as the nightly run's
        speed = client.submit(_model_speed, run_settings, batch_size, repeats, pure=False).result()
        run_settings = run_settings.with_(dask_address=cluster.scheduler_address)
        run_night(run_settings, spec.depot, night)  # warm-up: server, worker, model load
        t0 = time.perf_counter()
        summary = run_night(run_settings, spec.depot, night)
        e2e_s = time.perf_counter() - t0
        worker_peaks = client.run(_vmhwm_mb)
    finally:
        client.close()
        cluster.close()
    log(f"model only, paper preset, batch {batch_size}: fp32 eager {speed.fp32_pairs_s:.2f} pairs/s, fast path "
          f"{speed.fast_pairs_s:.2f} pairs/s (bf16={speed.bf16}, channels_last={speed.channels_last}): x{speed.speedup:.2f}")

    e2e = n_pairs / e2e_s
    caps = store.read_report("captures")
    caps = caps[(caps.depot == spec.depot) & (caps.night == night)]
    stages = {k: float(caps[f"t_{k}_ms"].mean()) for k in ("decode", "register", "infer", "write")}
    log(f"end to end, nightly flow: {n_pairs} pairs in {e2e_s:.1f} s = {e2e:.2f} pairs/s "
          f"({e2e / speed.fast_pairs_s:.2f} of the fast model-only rate); statuses {summary.by_status}")
    log("stage means per pair (ms, inside the worker; decode and registration overlap inference across pairs): "
          + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))

    # (e)
    delta, note = _f1_delta(store, spec.depot, night, settings.model, device)
    log(note if delta is None else f"f1_delta {delta:.4f} ({note})")
    out = {
        "model_fp32_pairs_s": round(speed.fp32_pairs_s, 3),
        "model_fast_pairs_s": round(speed.fast_pairs_s, 3),
        "speedup": round(speed.speedup, 3),
        "e2e_pairs_s": round(e2e, 3),
        "e2e_over_model": round(e2e / speed.fast_pairs_s, 3),
        "f1_delta": None if delta is None else round(delta, 5),
        "peak_rss_mb": round(max([_vmhwm_mb(), *worker_peaks.values()]), 1),
    }
    log(f"peak resident memory: this process {_vmhwm_mb():.0f} MiB, Dask workers "
          + ", ".join(f"{v:.0f}" for v in worker_peaks.values()) + " MiB")
    return out
