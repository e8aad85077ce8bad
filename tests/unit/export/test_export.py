"""Exported graphs (ONNX, OpenVINO, OpenVINO int8): parity with torch, the int8 F1 guard, backend selection."""

import json

import numpy as np
import pytest
import torch

from anodet_core.config import Settings
from anodet_core.demo_data import DemoSpec, generate_depot
from anodet_core.export.graph import available_formats, export_graph, load_runner
from anodet_core.models import create_model
from anodet_core.registry import exports as ex
from anodet_core.registry import model_store
from anodet_core.registry.model_store import ModelCard
from anodet_core.scoring import backends
from anodet_core.scoring.predictor import Predictor
from anodet_core.store.layout import Store
from anodet_core.training import prepare_arrays, store_pairs

pytestmark = pytest.mark.skipif(available_formats() != ["onnx", "openvino"],
                                reason="needs onnx, onnxruntime and openvino (installed by the test extra)")


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A tiny labelled depot, a stored lite AnoDFDNet version (production) and its prepared captures."""
    store = Store(str(tmp_path_factory.mktemp("store")))
    generate_depot(store, DemoSpec(depot="demo", width=320, height=200, nights=2, trains=1, cars=1, regions=3,
                                   anomaly_rate=0.5, seed=1))
    torch.manual_seed(0)
    model = create_model("anodfdnet", preset="lite").eval()
    card = model_store.save_version(store, model, ModelCard(name="anodfdnet", arch="anodfdnet", preset="lite"))
    model_store.set_alias(store, "anodfdnet", card.version)
    data = prepare_arrays(store.read_bytes, store_pairs(store, "demo", store.nights("demo")))
    assert len(data) >= 3 and data.mask.any()
    return store, card, data


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_export_matches_torch_and_is_recorded_beside_the_version(stored, fmt):
    store, card, data = stored
    rec = ex.export_version(store, "anodfdnet", fmt, data=data, data_note="tiny")
    assert rec.key == fmt and rec.parity_samples == len(data) and rec.parity_max_abs_diff < 1e-4
    card = model_store.read_card(store, "anodfdnet", card.version)
    assert ex.exports_of(card)[fmt] == rec  # the card records it, as written
    for f in rec.files:
        assert store.exists(f"{store.model_export_rel('anodfdnet', card.version, fmt)}/{f}")
    # a fresh runner from the store reproduces torch on other inputs, at another batch size
    model, _ = model_store.load(store, "anodfdnet")
    runner = ex.load_export(store, card, fmt)
    x = [torch.randn(3, 3, 256, 256), torch.randn(3, 3, 256, 256)]
    (out,) = runner(*[t.numpy() for t in x])
    with torch.no_grad():
        ref = model(*x).numpy()
    assert out.shape == ref.shape == (3, 1, 256, 256)
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_int8_is_refused_when_f1_moves_more_than_the_limit_and_nothing_is_written(stored, monkeypatch):
    store, card, data = stored
    before = model_store.read_card(store, "anodfdnet", card.version)
    monkeypatch.setattr(ex, "INT8_MAX_F1_DELTA", -1.0)  # any change at all (even none) is over this limit
    with pytest.raises(ex.Int8Refused, match="int8 refused"):
        ex.export_version(store, "anodfdnet", "openvino", int8=True, data=data, data_note="tiny")
    assert model_store.read_card(store, "anodfdnet", card.version) == before
    assert not store.exists(store.model_export_rel("anodfdnet", card.version, "openvino-int8"))
    monkeypatch.setattr(ex, "INT8_MAX_F1_DELTA", 0.005)
    rec = ex.export_version(store, "anodfdnet", "openvino", int8=True, data=data, data_note="tiny",
                            calibration_samples=4)
    assert rec.key == "openvino-int8" and rec.calibration_samples == 4
    assert rec.f1_delta is not None and rec.f1_delta <= 0.005
    assert rec.f1_delta == pytest.approx(abs(rec.f1_export - rec.f1_torch))
    assert rec.parity_max_abs_diff < 0.05  # int8: close to fp32, not equal
    assert "openvino-int8" in ex.exports_of(model_store.read_card(store, "anodfdnet", card.version))


def test_bad_exports_fail_before_writing(stored):
    store, card, data = stored
    with pytest.raises(ValueError, match="int8 is made by NNCF"):
        ex.export_key("onnx", True)
    with pytest.raises(ValueError, match="unknown export format"):
        ex.export_key("tflite", False)
    with pytest.raises(ValueError, match="shipped in the package"):
        ex.export_version(store, "anodfdnet:base", "onnx", data=data, data_note="tiny")
    with pytest.raises(LookupError, match="has no onnx-int8|has no tflite|has no"):
        ex.load_export(store, ModelCard(name="anodfdnet", arch="anodfdnet", version="9"), "onnx")


def test_single_image_models_export_to_openvino_with_scores_and_maps():
    torch.manual_seed(0)
    model = create_model("padim", preset=None).eval()
    model.fit([torch.randn(2, 3, 256, 256), torch.randn(2, 3, 256, 256)])
    x = torch.randn(3, 3, 256, 256)
    with pytest.raises(ValueError, match="openvino only"):
        export_graph(model, "onnx", (x,))
    score, amap = load_runner("openvino", export_graph(model, "openvino", (x,)))(x.numpy())
    with torch.no_grad():
        ref_s, ref_m = model.score_and_map(x)
    assert score.shape == (3,) and amap.shape == (3, 1, 256, 256)  # traced at batch 1, run on 3
    np.testing.assert_allclose(score, ref_s.numpy(), rtol=1e-4)
    np.testing.assert_allclose(amap, ref_m.numpy(), rtol=1e-4, atol=1e-3)


def test_backend_setting_lists_what_the_engines_are():
    assert Settings.model_fields["backend"].annotation.__args__ == backends.BACKENDS
    assert Settings().backend == "auto"


def test_backend_candidates_follow_the_setting_and_the_recorded_exports(stored):
    store, card, data = stored
    bare = ModelCard(name="m", arch="anodfdnet", version="1")
    assert backends.backend_candidates(bare, "auto", "cpu") == ["torch"]
    with pytest.raises(LookupError, match="ANODET_BACKEND=openvino"):
        backends.backend_candidates(bare, "openvino", "cpu")
    rec = {"key": "x", "format": "openvino", "int8": False, "files": [], "size_bytes": 0, "created_at": "",
           "seconds": 0.0, "parity_max_abs_diff": 0.0, "parity_samples": 1, "data": ""}
    card3 = ModelCard(name="m", arch="anodfdnet", version="1", extra={"exports": {
        "openvino": rec, "openvino-int8": {**rec, "int8": True}, "onnx": {**rec, "format": "onnx"}}})
    assert backends.backend_candidates(card3, "openvino", "cpu") == ["openvino-int8"]  # it passed the guard
    assert backends.backend_candidates(card3, "onnxruntime", "cpu") == ["onnx"]
    assert backends.backend_candidates(card3, "torch", "cpu") == ["torch"]
    assert backends.backend_candidates(card3, "auto", "cuda") == ["torch"]  # the GPU path stays torch
    assert backends.backend_candidates(card3, "auto", "cpu") == ["torch", "onnx", "openvino", "openvino-int8"]
    with pytest.raises(ValueError, match="unknown backend"):
        backends.backend_candidates(card3, "tensorrt", "cpu")


@pytest.mark.parametrize("fastest", ["torch", "onnx"])
def test_auto_picks_the_fastest_measured_and_reports_it(stored, monkeypatch, fastest):
    store, card, data = stored
    ex.export_version(store, "anodfdnet", "onnx", data=data, data_note="tiny")
    card = model_store.read_card(store, "anodfdnet", card.version)
    measured = []

    def fake_time(preds, cur, his, **kw):
        measured.append(sorted(preds))
        return {n: (10.0 if n == fastest else 1.0) for n in preds}

    monkeypatch.setattr(backends, "time_predictors", fake_time)
    lines: list[str] = []
    model, _ = model_store.load(store, "anodfdnet")
    pred = backends.make_predictor(store, model, card, backend="auto", batch_size=2, report=lines.append)
    assert measured and {"torch", "onnx"} <= set(measured[0])
    assert pred.backend == fastest and (pred.runner is not None) == (fastest != "torch")
    assert len(lines) == 1 and f"on {fastest}" in lines[0] and "CPU" in lines[0]
    # whichever runs, it scores like the eager torch model
    ref = Predictor(model_store.load(store, "anodfdnet")[0], fast=False)
    np.testing.assert_allclose(pred.predict(data.cur[:2], data.his[:2]).numpy(),
                               ref.predict(data.cur[:2], data.his[:2]).numpy(), atol=2e-2)


def test_time_predictors_really_measures_each_backend(stored):
    store, card, data = stored
    model, _ = model_store.load(store, "anodfdnet")
    rates = backends.time_predictors({"eager": Predictor(model, fast=False)}, data.cur[:2], data.his[:2], repeats=1)
    assert set(rates) == {"eager"} and rates["eager"] > 0


def test_export_command_writes_and_reports(stored, capsys):
    from flows.cli import main

    store, card, data = stored
    rc = main(["export", "--store", store.root, "--format", "openvino", "--depot", "demo", "--json"])
    assert rc == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["key"] == "openvino" and rec["parity_max_abs_diff"] < 1e-4 and rec["parity_samples"] == len(data)
    # int8: NNCF's progress bars and log lines go to stderr; stdout holds the record alone (or nothing, refused)
    rc = main(["export", "--store", store.root, "--format", "openvino", "--int8", "--depot", "demo", "--json",
               "--calibration-samples", "4"])
    out = capsys.readouterr()
    assert rc in (0, 1) and "Statistics collection" in out.err
    if rc == 0:
        assert json.loads(out.out)["key"] == "openvino-int8"
    else:
        assert out.out == "" and "F1" in out.err
    assert main(["export", "--store", store.root, "--format", "onnx", "--int8"]) == 2
    assert "int8 is made by NNCF" in capsys.readouterr().err
    assert main(["export", "--store", store.root, "--format", "onnx", "--depot", "nowhere"]) == 2
