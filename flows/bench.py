"""``anodet bench``: model-only and end-to-end throughput, measured side by side in one run.

(a) paper-preset AnoDFDNet, eager fp32 NCHW (the reference way) and (b) the production fast path, same
process, alternating, in a Dask worker set up as for the nightly run (and, for comparison only, in one whose
OpenMP threads spin while they wait); (c) the nightly flow from store to Zarr +
Parquet on a generated night of 1920x1200 JPEGs (depot ``bench-<captures>``, generated once per store) with the
paper preset, after a warm-up run of the same night (Prefect server start, Dask worker and model load are not
counted), (a)/(b) measured before and after (c); (d) stage breakdown from the report's timing columns and peak
resident memory; (e) F1 of the store's production model with the fast path minus fp32, on the bench night's labels;
(f) every inference backend side by side on the same inputs (eager fp32, torch fast path, ONNX Runtime, OpenVINO
fp32, OpenVINO int8), for the paper preset and the production model, with each backend's F1 change on the bench
night (production model) and the CPU's relevant flags.

The bench model's exports (ONNX, OpenVINO, OpenVINO int8 calibrated on the bench night) are written beside its
version in the store once, like any ``anodet export``, so that the nightly run's ``ANODET_BACKEND=auto`` chooses
among them as it would in production; the production model's are made in memory and never written.
"""

from __future__ import annotations

import copy
import os
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import dask
import torch

from anodet_core.config import Settings, resolve_device
from anodet_core.demo_data import DemoSpec, generate_depot
from anodet_core.evaluation.bench import ModelSpeed, compare_predictors
from anodet_core.export.cpu import cpu_flags, cpu_summary, isa_limit
from anodet_core.export.graph import available_formats, export_graph, load_runner
from anodet_core.models import create_model
from anodet_core.registry import model_store
from anodet_core.registry.exports import (
    EXPORT_KEYS,
    Int8Refused,
    check_export,
    export_version,
    exports_of,
    pixel_f1,
    quantize_guarded,
)
from anodet_core.registry.model_store import ModelCard
from anodet_core.scoring.backends import make_predictor, random_pairs, time_predictors
from anodet_core.scoring.predictor import Predictor
from anodet_core.store.layout import Store
from anodet_core.training import prepare_arrays, store_pairs

BENCH_MODEL = "anodfdnet-bench"
# The network's speed does not depend on its weights, but writing a map does: a random-init model scores ~0.5
# everywhere, so every native-size map would be dense (upsampling + zstd of every pixel), while a trained model's
# quantized maps are zero almost everywhere (far cheaper to write). The bench model is therefore the random-init
# paper preset plus one output bias (a single extra parameter) that shifts its logits (near zero at random init)
# down by BENCH_LOGIT_SHIFT, which makes its maps as sparse as a trained model's.
BENCH_LOGIT_SHIFT = -12.0
BENCH_CONFIG = {"final_bias": True}  # create_model overrides of the bench model (on top of preset="paper")
EXPORT_SAMPLES = 32  # bench pairs that check the exports against torch and calibrate int8


def bench_model() -> torch.nn.Module:
    """The random-init paper preset used for every speed figure; see BENCH_LOGIT_SHIFT for its one output bias."""
    torch.manual_seed(0)
    model = create_model("anodfdnet", preset="paper", **BENCH_CONFIG).eval()
    with torch.no_grad():
        model.decoder.d1.bias.fill_(BENCH_LOGIT_SHIFT)  # type: ignore[union-attr,operator]  # AnoDFDNet's output conv
    return model


def _vmhwm_mb(pid: int | str = "self") -> float:
    """Peak resident set (VmHWM) of a process (default: the calling one), MiB; getrusage off Linux."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 if pid == "self" else 0.0


def _omp_wait_policy() -> str:
    return os.environ.get("OMP_WAIT_POLICY", "unset")  # in the worker (os.environ.get itself would travel by value)


def _worker_peak_mb() -> float:
    """Peak resident set of a Dask worker plus those of its helper processes (anodet_core.night.prep_pool): the sum of
    per-process peaks, an upper bound of what they held at once."""
    import psutil

    return _vmhwm_mb() + sum(_vmhwm_mb(p.pid) for p in psutil.Process().children(recursive=True))


def _model_speed(settings: Settings, batch_size: int, repeats: int) -> ModelSpeed:
    """Runs in a Dask worker: the bench model (paper preset) in eager fp32 against the predictor the nightly run
    uses (``ANODET_BACKEND``; the torch fast path unless an export measured faster), same inputs, alternating."""
    from anodet_core.night.batch import worker_threads

    torch.set_num_threads(worker_threads(settings))
    store = Store(settings.store, settings.storage_options or None)
    device = resolve_device(settings.device)
    model, card = model_store.load(store, BENCH_MODEL, device)
    night = make_predictor(store, copy.deepcopy(model), card, backend=settings.backend, device=device,
                           fast=settings.fast, batch_size=batch_size)
    return compare_predictors(Predictor(model, device, fast=False), night, batch_size=batch_size, repeats=repeats)


BACKEND_NAMES: tuple[str, ...] = ("eager_fp32", "torch", "onnxruntime", "openvino", "openvino_int8")
"""The backends ``anodet bench`` times side by side; ``onnxruntime`` runs the ``onnx`` export."""
_EXPORT_OF = {"onnxruntime": "onnx", "openvino": "openvino", "openvino_int8": "openvino-int8"}


def _backend_speeds(settings: Settings, ref: str, exports: dict[str, dict[str, bytes]] | None, batch_size: int,
                    repeats: int) -> dict[str, float]:
    """Runs in a Dask worker: pairs/s of every backend of model ``ref`` on the same random batch, alternating.
    ``exports``: export key -> files; None: the version's exports recorded in the store."""
    from anodet_core.night.batch import worker_threads
    from anodet_core.registry.exports import load_export

    threads = worker_threads(settings)
    torch.set_num_threads(threads)
    store = Store(settings.store, settings.storage_options or None)
    model, card = model_store.load(store, ref, "cpu")
    preds = {"eager_fp32": Predictor(copy.deepcopy(model), "cpu", fast=False), "torch": Predictor(model, "cpu", fast=True)}
    for name, key in _EXPORT_OF.items():
        if exports is None and key in exports_of(card):
            runner = load_export(store, card, key, threads)
        elif exports is not None and key in exports:
            runner = load_runner(key.split("-")[0], exports[key], threads)
        else:
            continue
        preds[name] = Predictor(model, "cpu", runner=runner, backend=key)
    return time_predictors(preds, *random_pairs(batch_size, preds["torch"].info.input_size), repeats=repeats, warmup=1)


def _exports_in_memory(model: torch.nn.Module, data: Any, few: Any, batch_size: int,
                       log: Callable[[str], Any]) -> dict[str, dict[str, bytes]]:
    """Export key -> files of every format installed here; int8 as ``anodet export --int8`` makes it (calibrated on
    ``few``, kept only if it passes the F1 guard on ``data``, the labelled bench pairs)."""
    from anodet_core.registry.exports import _inputs

    out: dict[str, dict[str, bytes]] = {}
    example = _inputs(model, few, slice(0, min(len(few), batch_size)))
    for fmt in available_formats():
        try:
            out[fmt] = export_graph(model, fmt, example)
        except (RuntimeError, ValueError) as exc:  # a format that cannot take this model is reported, not fatal
            log(f"no {fmt} export of the production model: {exc}")
    if "openvino" in out:
        try:
            out["openvino-int8"], cf, (f1_t, f1_q), _ = quantize_guarded(model, data, "bench pairs", len(few), batch_size)
            log(f"production int8: {'channels-first' if cf else 'as-is'} Transformer, F1 {f1_q:.4f} against {f1_t:.4f}")
        except Int8Refused as exc:
            log(f"no int8 timing of the production model: {exc}")
    return out


def _export_bench_model(store: Store, card: ModelCard, data: Any, note: str, batch_size: int,
                        log: Callable[[str], Any]) -> None:
    """Write the bench model's missing exports into the store (once per store), as ``anodet export`` would."""
    have = set(exports_of(card))
    for key in EXPORT_KEYS:
        fmt = key.split("-")[0]
        if key in have or fmt not in available_formats():
            continue
        try:
            rec = export_version(store, f"{BENCH_MODEL}:{card.version}", fmt, int8=key.endswith("int8"), data=data,
                                 data_note=note, batch_size=batch_size)
            log(f"bench model exported as {key}: parity {rec.parity_max_abs_diff:.2e}, {rec.seconds:.1f} s")
        except Int8Refused as exc:  # the bench model's maps are ~0 everywhere: the guard can refuse it, harmlessly
            log(f"bench model: {exc}")


def _backend_f1(model: torch.nn.Module, exports: dict[str, dict[str, bytes]], data: Any, device: str,
                batch_size: int) -> dict[str, float]:
    """Pixel F1 at 0.5 of the production model on ``data`` (labelled bench pairs) per backend."""
    f1 = {}
    for name, fast in (("eager_fp32", False), ("torch", True)):
        pred = Predictor(copy.deepcopy(model), device, fast=fast)
        f1[name] = pixel_f1([pred.predict(data.cur[s : s + batch_size], data.his[s : s + batch_size]).cpu().numpy()[:, None]
                             for s in range(0, len(data), batch_size)], data.mask)
    cpu_model = copy.deepcopy(model).cpu().eval()
    for name, key in _EXPORT_OF.items():
        if key in exports:
            _, _, maps = check_export(cpu_model, load_runner(key.split("-")[0], exports[key]), data, batch_size)
            f1[name] = pixel_f1(maps, data.mask)
    return f1


def run_bench(
    settings: Settings,
    *,
    captures: int = 256,
    batch_size: int = 8,
    repeats: int = 8,
    e2e_runs: int = 3,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Run the whole benchmark; returns the figures of ``anodet bench --json``.

    Drift-resistant order: model only, an untimed warm-up run, then ``e2e_runs`` times a timed nightly run
    followed by model only again, so a slower or faster stretch of a shared machine moves both sides of each
    ratio alike. Every rate is pairs over summed wall time: the model-only rates over the timed batches of all
    ``e2e_runs + 1`` measurements (``repeats`` batches per path each), the end-to-end rate over its runs. The
    comparison worker with spinning OpenMP threads is measured in the first and the last model-only round.
    """
    from distributed import Client, LocalCluster

    from anodet_core.night.batch import worker_threads
    from flows.nightly import run_night
    from flows.runners import local_cluster_kwargs, worker_env

    if captures < 4 or batch_size < 1 or repeats < 1 or e2e_runs < 1:
        raise ValueError("bench needs captures >= 4, batch_size >= 1, repeats >= 1 and e2e_runs >= 1")
    store = Store(settings.store, settings.storage_options or None)
    device = resolve_device(settings.device)
    regions = captures // 4  # 2 trains x 2 cars x regions
    spec = DemoSpec(depot=f"bench-{4 * regions}", nights=1, trains=2, cars=2, regions=regions, seed=11)
    # marked first, so that even a half-generated bench depot stays out of a real store's schedules
    store.mark_bench_depot(spec.depot, f"anodet bench: a generated night of {4 * regions} captures")
    if not store.nights(spec.depot):
        log(f"generating the bench night (once per store): {4 * regions} captures at {spec.width}x{spec.height}")
        generate_depot(store, spec)
    night = store.nights(spec.depot)[0]
    n_pairs = len(store.read_manifest(spec.depot, night))

    current = model_store.get_alias(store, BENCH_MODEL)
    if current is None or model_store.read_card(store, BENCH_MODEL, current).config != BENCH_CONFIG:  # older benches'
        card = model_store.save_version(store, bench_model(), ModelCard(name=BENCH_MODEL, arch="anodfdnet",
                                                                        preset="paper", config=BENCH_CONFIG))
        model_store.set_alias(store, BENCH_MODEL, card.version)
        current = card.version
    flags = cpu_flags()
    log(f"CPU: {cpu_summary()}" + ("" if isa_limit() else " (no instruction-set limit: set ONEDNN_MAX_CPU_ISA=AVX2 "
                                   "ATEN_CPU_CAPABILITY=avx2 to measure torch's AVX2 path here)"))
    pairs = store_pairs(store, spec.depot, [night])
    data = prepare_arrays(store.read_bytes, pairs)  # every labelled bench pair: the F1 figures
    few = prepare_arrays(store.read_bytes, pairs[:EXPORT_SAMPLES])  # the exports' parity and int8 calibration
    note = f"{len(few)} prepared captures of {spec.depot} {night}"
    _export_bench_model(store, model_store.read_card(store, BENCH_MODEL, current), few, note, batch_size, log)
    run_settings = settings.with_(model=BENCH_MODEL, batch_size=batch_size)
    cluster = LocalCluster(**local_cluster_kwargs(run_settings))
    # The nightly workers' OpenMP threads sleep while they wait (OMP_WAIT_POLICY=PASSIVE, for the preparation
    # helpers). (b) is the fast path in such a worker, as it runs at night; a second worker whose threads spin
    # (OpenMP's default) measures the same model alongside, so that the log shows whether that choice flatters
    # e2e_over_model by slowing the model (README, performance).
    spin_env = {k: v for k, v in worker_env(run_settings).items() if k != "OMP_WAIT_POLICY"}
    spin_kwargs = local_cluster_kwargs(run_settings) | {"n_workers": 1}  # outside: it sets the worker env itself
    # a nanny also copies its pre-spawn environment into this process's os.environ, which its workers inherit
    inherited = os.environ.pop("OMP_WAIT_POLICY", None)
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": spin_env}):
            spin_cluster = LocalCluster(**spin_kwargs)
    finally:
        if inherited is not None:
            os.environ["OMP_WAIT_POLICY"] = inherited
    client, spin_client = Client(cluster), Client(spin_cluster)
    policies = {kind: sorted(set(c.run(_omp_wait_policy).values()))
                for kind, c in (("nightly", client), ("spinning", spin_client))}
    if policies["spinning"] != ["unset"]:
        raise RuntimeError(f"the comparison worker did not get OpenMP's default wait policy: {policies}")
    speeds: dict[str, list[ModelSpeed]] = {"nightly": [], "spinning": []}

    def model_only(spinning: bool) -> None:
        for kind, c in (("nightly", client), ("spinning", spin_client))[: 2 if spinning else 1]:
            speeds[kind].append(c.submit(_model_speed, run_settings, batch_size, repeats, pure=False).result())

    try:
        # (a), (b): model only, inside worker processes configured as the nightly run's
        model_only(spinning=True)
        run_settings = run_settings.with_(dask_address=cluster.scheduler_address)
        run_night(run_settings, spec.depot, night)  # warm-up: server, worker, model load
        e2e_times = []
        for i in range(e2e_runs):
            t0 = time.perf_counter()
            summary = run_night(run_settings, spec.depot, night)
            e2e_times.append(time.perf_counter() - t0)
            model_only(spinning=i == e2e_runs - 1)
        worker_peaks = client.run(_worker_peak_mb)
        # (f) every backend side by side, paper preset (its exports in the store) and production (in memory)
        prod_model, prod_card = model_store.load(store, settings.model, "cpu")
        prod_exports = _exports_in_memory(prod_model, data, few, batch_size, log)
        backend_rates = {
            "paper": client.submit(_backend_speeds, run_settings, BENCH_MODEL, None, batch_size, repeats,
                                   pure=False).result(),
            "production": client.submit(_backend_speeds, run_settings, settings.model, prod_exports, batch_size,
                                        repeats, pure=False).result(),
        }
    finally:
        for c in (client, spin_client):
            c.close()
        for cl in (cluster, spin_cluster):
            cl.close()
    prod_f1 = _backend_f1(prod_model, prod_exports, data, device, batch_size)

    def rate(kind: str, path: str) -> float:  # equal pairs per measurement: pairs / summed time
        return len(speeds[kind]) / sum(1.0 / getattr(sp, path) for sp in speeds[kind])

    fp32, fast = rate("nightly", "fp32_pairs_s"), rate("nightly", "fast_pairs_s")
    spin_fp32, spin_fast = rate("spinning", "fp32_pairs_s"), rate("spinning", "fast_pairs_s")
    sp0 = speeds["nightly"][0]
    log(f"model only, paper preset, batch {batch_size}, in a nightly worker: fp32 eager {fp32:.2f} pairs/s, the night's "
        f"path ({sp0.backend}, bf16={sp0.bf16}, channels_last={sp0.channels_last}) {fast:.2f} pairs/s: x{fast / fp32:.2f} "
        "(before the "
        "nightly runs and after each: fp32 " + ", ".join(f"{sp.fp32_pairs_s:.2f}" for sp in speeds["nightly"])
        + ", fast " + ", ".join(f"{sp.fast_pairs_s:.2f}" for sp in speeds["nightly"])
        + f"; OMP_WAIT_POLICY {policies['nightly']}); in a worker whose OpenMP threads "
        f"spin (OMP_WAIT_POLICY {policies['spinning']}): "
        f"{spin_fp32:.2f} / {spin_fast:.2f} (e2e over that fast rate: "
        "see below)")

    e2e_s = statistics.fmean(e2e_times)
    e2e = n_pairs / e2e_s
    caps = store.read_report("captures")
    caps = caps[(caps.depot == spec.depot) & (caps.night == night)]
    stages = {k: float(caps[f"t_{k}_ms"].mean()) for k in ("decode", "register", "infer", "write")}
    log(f"end to end, nightly flow: {n_pairs} pairs in {e2e_s:.1f} s (mean of "
        + ", ".join(f"{t:.1f}" for t in e2e_times) + f" s) = {e2e:.2f} pairs/s ({e2e / fast:.3f} of the fast "
        f"model-only rate; {e2e / spin_fast:.3f} of the spinning worker's); statuses "
        f"{summary.by_status}")
    log("stage means per pair (decode, registration: CPU ms in the preparation helpers, which run beside the "
        f"model; writing: ms of wall time on one of {worker_threads(run_settings)} threads; inference per pair = its "
        "batch's time / batch size): "
        + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))

    # (e), (f)
    delta = abs(prod_f1["torch"] - prod_f1["eager_fp32"])
    prod_name = f"{prod_card.name}:{prod_card.version}"
    log(f"f1_delta {delta:.4f} ({prod_name} F1 fp32 {prod_f1['eager_fp32']:.4f} fast {prod_f1['torch']:.4f} on "
        f"{len(data)} pairs)")
    log(f"backends side by side, batch {batch_size}, pairs/s (x eager fp32); production's F1 change on {len(data)} "
        f"bench pairs; the night ran on {sp0.backend}:")
    for which, rates in backend_rates.items():
        ref = rates["eager_fp32"]
        log(f"  {which} ({'paper preset, random init' if which == 'paper' else prod_name}): " + ", ".join(
            f"{n} {r:.2f} (x{r / ref:.2f}"
            + (f", F1 {prod_f1[n] - prod_f1['eager_fp32']:+.4f}" if which == "production" and n in prod_f1 else "")
            + ")" for n, r in rates.items()))
    out = {
        "model_fp32_pairs_s": round(fp32, 3),
        "model_fast_pairs_s": round(fast, 3),
        "speedup": round(fast / fp32, 3),
        "e2e_pairs_s": round(e2e, 3),
        "e2e_over_model": round(e2e / fast, 3),
        "f1_delta": round(delta, 5),
        "peak_rss_mb": round(max([_vmhwm_mb(), *worker_peaks.values()]), 1),
        "night_backend": sp0.backend,
        "cpu_flags": flags,
        "isa_limit": isa_limit(),
    }
    for which, rates in backend_rates.items():
        prefix = "" if which == "paper" else "production_"
        for n in BACKEND_NAMES:  # one key per backend; null where this machine lacks it
            out[f"{prefix}pairs_s_{n}"] = round(rates[n], 3) if n in rates else None
            out[f"{prefix}speedup_{n}"] = round(rates[n] / rates["eager_fp32"], 3) if n in rates else None
    for n in BACKEND_NAMES[1:]:
        out[f"production_f1_delta_{n}"] = (round(abs(prod_f1[n] - prod_f1["eager_fp32"]), 5) if n in prod_f1 else None)
    log(f"peak resident memory: this process {_vmhwm_mb():.0f} MiB, Dask workers with their preparation helpers "
        + ", ".join(f"{v:.0f}" for v in worker_peaks.values()) + " MiB")
    return out
