"""A model as an exported inference graph (ONNX, OpenVINO IR, OpenVINO int8), and runners that execute one.

The graphs take what the torch model takes, float32 NCHW already normalised, so the one input preparation
(:func:`anodet_core.scoring.predictor.to_input`) serves every backend. Paired models: inputs ``cur``, ``his``,
output ``map`` (the sigmoid map, (B, 1, H, W)). Single-image models: input ``image``, outputs ``score`` (B,) and
``map`` (B, 1, H, W), i.e. their ``score_and_map``. What is exported is the model's deploy form
(:mod:`anodet_core.export.deploy`: transposed convolutions and the Transformer rewritten as convolutions).
Paired graphs take any batch; single-image graphs are
traced at batch 1 (their feature pyramids record the batch as a constant) and the runner feeds them one image at a
time. Single-image models export to OpenVINO only: the ONNX exporter cannot express their adaptive pooling.

An export is a set of files held as bytes (``{"model.onnx": ...}`` or ``{"model.xml": ..., "model.bin": ...}``),
so that the registry can keep it beside a version in any fsspec store and a worker can run it without a local
copy. Nothing here imports onnxruntime or openvino before it is needed: both are optional at run time.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["FORMATS", "Runner", "available_formats", "export_graph", "graph_module", "input_names", "load_runner",
           "quantize_openvino"]

FORMATS: tuple[str, ...] = ("onnx", "openvino")
_PACKAGES = {"onnx": ("onnx", "onnxruntime"), "openvino": ("openvino",)}
ONNX_OPSET = 17


def available_formats() -> list[str]:
    """The export formats whose packages are installed here (``onnx`` needs onnx + onnxruntime)."""
    return [f for f in FORMATS if all(importlib.util.find_spec(p) is not None for p in _PACKAGES[f])]


def _require(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    missing = [p for p in _PACKAGES[fmt] if importlib.util.find_spec(p) is None]
    if missing:
        raise RuntimeError(f"format {fmt!r} needs the Python packages {', '.join(missing)} (pip install {' '.join(missing)})")


class _ScoreAndMap(torch.nn.Module):
    """A single-image model's ``score_and_map`` as a plain forward: (scores (B,), maps (B, 1, H, W))."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        score, amap = self.model.score_and_map(x, maps=True)  # type: ignore[operator]
        return score, amap


def _paired(model: torch.nn.Module) -> bool:
    from ..models._registry import ModelKind, instance_info

    return instance_info(model).kind is ModelKind.PAIRED


def graph_module(model: torch.nn.Module) -> torch.nn.Module:
    """The module that is exported: the paired model itself, a single-image model's ``score_and_map``."""
    return model.eval() if _paired(model) else _ScoreAndMap(model.eval()).eval()


def input_names(model: torch.nn.Module) -> tuple[list[str], list[str]]:
    """(input names, output names) of ``model``'s graph."""
    return (["cur", "his"], ["map"]) if _paired(model) else (["image"], ["score", "map"])


def export_graph(model: torch.nn.Module, fmt: str, example: Sequence[torch.Tensor], *,
                 channels_first_transformer: bool = False) -> dict[str, bytes]:
    """The files of ``model``'s deploy form exported to ``fmt`` (fp32), traced on ``example`` (the model's inputs,
    CPU float32); ``channels_first_transformer``: see :func:`anodet_core.export.deploy.deploy_form`."""
    _require(fmt)
    paired = _paired(model)
    if fmt == "onnx" and not paired:
        raise ValueError("single-image models export to openvino only: the ONNX exporter cannot express the adaptive "
                         "pooling of their feature pyramid")
    from .deploy import deploy_form

    module = graph_module(deploy_form(model, channels_first_transformer)).cpu()  # the same function in the ops int8 CPU runtimes run fast
    example = tuple(t.cpu().float() if paired else t[:1].cpu().float() for t in example)
    inputs, outputs = input_names(model)
    with torch.no_grad():
        if fmt == "onnx":
            buf = io.BytesIO()
            dyn = {n: {0: "batch"} for n in (*inputs, *outputs)}
            # the TorchScript exporter: the dynamo one needs onnxscript, which is not a dependency
            torch.onnx.export(module, example, buf,  # type: ignore[arg-type]  # file objects work, the stub says paths
                              input_names=inputs, output_names=outputs, dynamic_axes=dyn,
                              opset_version=ONNX_OPSET, dynamo=False)
            return {"model.onnx": buf.getvalue()}
        import openvino as ov

        ov_model = ov.convert_model(module, example_input=example)
        for port, name in zip(ov_model.inputs, inputs):
            port.get_tensor().set_names({name})
        for port, name in zip(ov_model.outputs, outputs):
            port.get_tensor().set_names({name})
        ov_model.reshape({name: [-1 if paired else 1, *t.shape[1:]] for name, t in zip(inputs, example)})
        return _ov_files(ov_model)


def _ov_files(ov_model: Any) -> dict[str, bytes]:
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.xml")
        ov.save_model(ov_model, path, compress_to_fp16=False)  # fp32 weights: parity with torch
        with open(path, "rb") as fx, open(path[:-3] + "bin", "rb") as fb:
            return {"model.xml": fx.read(), "model.bin": fb.read()}


def _read_ov(files: dict[str, bytes]) -> Any:
    import openvino as ov

    return ov.Core().read_model(model=files["model.xml"].decode(),
                                weights=ov.Tensor(np.frombuffer(files["model.bin"], np.uint8).copy()))


def quantize_openvino(files: dict[str, bytes], calibration: Iterable[Sequence[np.ndarray]]) -> dict[str, bytes]:
    """int8 by NNCF post-training quantization of an OpenVINO export, calibrated on ``calibration`` (each item the
    graph's inputs, float32 NCHW, as :func:`export_graph` takes them)."""
    _require("openvino")
    import nncf
    from nncf.common.logging.logger import nncf_logger

    items = [list(x) for x in calibration]
    if not items:
        raise ValueError("int8 calibration needs at least one batch")
    # NNCF logs to stdout and draws its progress bars there: both belong with the log (stderr), or a command's
    # output (``anodet bench --json``: one JSON object on stdout) is broken by them
    # (the streams are swapped for the call only: setStream would flush a stream that may be closed by now)
    handlers = [(h, h.stream) for h in nncf_logger.handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    try:
        for h, _ in handlers:
            h.stream = sys.stderr
        with contextlib.redirect_stdout(sys.stderr):
            # NNCF counts dataset items (here: batches) against subset_size
            quantized = nncf.quantize(_read_ov(files), nncf.Dataset(items), subset_size=len(items))
    finally:
        for h, stream in handlers:
            h.stream = stream
    return _ov_files(quantized)


class Runner:
    """An exported graph ready to run: ``runner(*inputs)`` -> outputs, float32 NCHW numpy in and out."""

    def __init__(self, fmt: str, files: dict[str, bytes], threads: int | None = None) -> None:
        _require(fmt)
        self.fmt = fmt
        threads = threads or torch.get_num_threads()
        if fmt == "onnx":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._session = ort.InferenceSession(files["model.onnx"], opts, providers=["CPUExecutionProvider"])
            self._inputs = [i.name for i in self._session.get_inputs()]
        else:
            import openvino as ov

            # f32 precision: on CPUs with bf16 OpenVINO would otherwise run fp32 graphs in bf16 (an int8 graph
            # keeps its int8 kernels); one request at a time, the latency hint, on the torch thread budget
            self._core = ov.Core()
            self._config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                            "INFERENCE_NUM_THREADS": threads}
            self._model = _read_ov(files)
            self._batch1 = self._model.inputs[0].get_partial_shape()[0].is_static  # a single-image graph
            self._compiled: dict[int, Any] = {}  # batch size -> (compiled model, infer request)

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        arrays = [np.ascontiguousarray(x, dtype=np.float32) for x in inputs]
        if self.fmt == "onnx":
            return list(self._session.run(None, dict(zip(self._inputs, arrays))))
        if self._batch1:
            parts = [self._infer([a[i : i + 1] for a in arrays]) for i in range(len(arrays[0]))]
            return [np.concatenate(outs) for outs in zip(*parts)]
        return self._infer(arrays)

    def _infer(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        n = len(arrays[0])
        if n not in self._compiled:  # one static-shape compilation per batch size: OpenVINO's CPU kernels are
            model = self._model.clone()  # markedly faster on static shapes than on a dynamic batch
            if not self._batch1:
                model.reshape({port.get_any_name(): [n, *a.shape[1:]] for port, a in zip(model.inputs, arrays)})
            compiled = self._core.compile_model(model, "CPU", self._config)
            self._compiled[n] = (compiled, compiled.create_infer_request())
        compiled, request = self._compiled[n]
        res = request.infer(arrays)
        return [np.array(res[out]) for out in compiled.outputs]


def load_runner(fmt: str, files: dict[str, bytes], threads: int | None = None) -> Runner:
    """A :class:`Runner` for files written by :func:`export_graph` / :func:`quantize_openvino`."""
    return Runner(fmt, files, threads)
