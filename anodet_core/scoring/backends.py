"""Which engine runs a paired model's forward pass: torch, or one of its exported graphs (``ANODET_BACKEND``).

``torch``: the model itself (the fast path: bf16 autocast where the hardware has bf16, channels_last).
``openvino``: the version's OpenVINO export, int8 when one was recorded (it passed the F1 guard), else fp32.
``onnxruntime``: its ONNX export. ``auto``: on CUDA, torch; on a CPU, torch unless the version has exports, in
which case every candidate is timed side by side on the same inputs (:func:`time_predictors`) and the fastest
wins. The choice is measured, not guessed from CPU flags: on an AVX2 machine fp32 OpenVINO beats eager torch,
on an AVX-512-BF16 one torch's bf16 path can beat fp32 OpenVINO. The explicit backends fail with a clear
LookupError when the version lacks the export they need.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import numpy as np
import torch

from ..registry.exports import exports_of, load_export
from ..registry.model_store import ModelCard
from ..store.layout import Store
from .predictor import Predictor

__all__ = ["BACKENDS", "backend_candidates", "make_predictor", "random_pairs", "time_predictors"]

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("auto", "torch", "openvino", "onnxruntime")
_EXPORTS_OF = {"openvino": ("openvino-int8", "openvino"), "onnxruntime": ("onnx",)}


def random_pairs(n: int, size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` seeded random (current, history) uint8 image pairs, each NxSxSx3; history is current plus noise in [-8, 8]."""
    rng = np.random.default_rng(seed)
    cur = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    his = np.clip(cur.astype(np.int16) + rng.integers(-8, 9, cur.shape), 0, 255).astype(np.uint8)
    return cur, his


def time_predictors(predictors: Mapping[str, Predictor], cur: np.ndarray, his: np.ndarray, *, repeats: int = 2,
                    warmup: int = 1) -> dict[str, float]:
    """Pairs/s of each predictor on the same batch, alternating batch by batch (a busy neighbour slows all alike);
    pairs over the summed wall time of the timed batches."""
    def once(p: Predictor) -> float:
        cuda = p.device.startswith("cuda")
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        p.predict(cur, his)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for _ in range(warmup):
        for p in predictors.values():
            once(p)
    spent = dict.fromkeys(predictors, 0.0)
    for _ in range(repeats):
        for name, p in predictors.items():
            spent[name] += once(p)
    return {name: len(cur) * repeats / t for name, t in spent.items()}


def backend_candidates(card: ModelCard, backend: str, device: str) -> list[str]:
    """What ``backend`` may run for this version: ``"torch"`` and/or export keys, in order of preference."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    from ..export.graph import available_formats

    have = [k for k, rec in exports_of(card).items() if rec.format in available_formats()]
    if backend == "torch":
        return ["torch"]
    if backend == "auto":
        return ["torch"] if device.startswith("cuda") else ["torch", *sorted(have)]
    found = [k for k in _EXPORTS_OF[backend] if k in have]
    if not found:
        raise LookupError(f"ANODET_BACKEND={backend}, but {card.name}:{card.version} has no "
                          f"{' or '.join(_EXPORTS_OF[backend])} export here (recorded: "
                          f"{', '.join(sorted(exports_of(card))) or 'none'}); run anodet export or use auto/torch")
    return found[:1]


def make_predictor(store: Store, model: torch.nn.Module, card: ModelCard, *, backend: str = "auto",
                   device: str = "cpu", fast: bool = True, batch_size: int = 8,
                   report: Callable[[str], object] = log.info) -> Predictor:
    """The predictor the night uses for a loaded paired model: see the module docstring; ``report`` gets one line
    saying what was chosen and why."""
    names = backend_candidates(card, backend, device)
    if names == ["torch"]:
        return Predictor(model, device, fast=fast)
    threads = torch.get_num_threads()
    preds = {n: Predictor(model, device, fast=fast) if n == "torch" else
             Predictor(model, device, runner=load_export(store, card, n, threads), backend=n) for n in names}
    if len(preds) == 1:
        (only,) = preds.values()
        report(f"backend {backend}: {card.name}:{card.version} runs on {only.backend}")
        return only
    size = preds[names[0]].info.input_size
    rates = time_predictors(preds, *random_pairs(max(1, batch_size), size))
    best = max(rates, key=lambda n: rates[n])
    from ..export.cpu import cpu_summary

    report(f"backend auto: {card.name}:{card.version} on {best} (measured pairs/s, batch {batch_size}: "
           + ", ".join(f"{n} {r:.2f}" for n, r in rates.items()) + f"; CPU {cpu_summary()})")
    chosen = preds[best]
    if best != "torch":
        chosen.model = chosen.model.cpu()
    return chosen
