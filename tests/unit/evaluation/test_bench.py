"""`anodet bench`: the bench model, the side-by-side model timing and the whole command on a tiny night."""

import json

import numpy as np
import pytest
import torch

from anodet_core.evaluation.bench import compare_model_paths, random_pairs
from anodet_core.models import create_model
from anodet_core.scoring.predictor import Predictor
from anodet_core.store.maps import quantize

JSON_KEYS = {"model_fp32_pairs_s", "model_fast_pairs_s", "speedup", "e2e_pairs_s", "e2e_over_model", "f1_delta",
             "peak_rss_mb"}


def test_bench_model_is_the_paper_preset_with_maps_as_sparse_as_a_trained_models():
    from flows.bench import bench_model

    model = bench_model()
    assert sum(p.numel() for p in model.parameters()) == 35_928_064 + 1  # paper preset + the one output bias
    cur, his = random_pairs(2)
    maps = Predictor(model, "cpu", fast=False).predict(cur, his).numpy()
    assert maps.shape == (2, 256, 256)
    assert not quantize(maps, "uint8").any()  # stored maps are zero, as a trained model's mostly are
    torch.manual_seed(0)
    plain = Predictor(create_model("anodfdnet", preset="paper").eval(), "cpu", fast=False).predict(cur, his).numpy()
    assert (quantize(plain, "uint8") > 0).mean() > 0.99  # without the shift every pixel would be written


def test_model_paths_are_timed_side_by_side():
    torch.manual_seed(0)
    model = create_model("anodfdnet", preset="lite").eval()
    speed = compare_model_paths(model, create_model("anodfdnet", preset="lite").eval(), batch_size=2, repeats=1, warmup=1)
    assert speed.fp32_pairs_s > 0 and speed.fast_pairs_s > 0
    assert speed.channels_last and speed.batch_size == 2


def test_model_path_rates_count_only_the_timed_batches_of_each_path(monkeypatch):
    """On a fake clock (fp32 batch 0.5 s, fast batch 0.2 s, warm-up batches 10x slower): the rates are pairs over
    the summed time of each path's timed batches, the paths alternate, and each path is the Predictor it claims."""
    import anodet_core.scoring.backends as backends
    from anodet_core.scoring.predictor import bf16_supported

    clock = [0.0]
    calls: list[tuple[bool, tuple[int, ...]]] = []
    n_warmup, n_repeats, batch = 2, 3, 4

    def predict(self, cur, his):
        fast = self.channels_last
        warm = len(calls) < 2 * n_warmup
        calls.append((fast, cur.shape))
        clock[0] += (0.2 if fast else 0.5) * (10 if warm else 1)
        return torch.zeros(cur.shape[0], 8, 8)

    monkeypatch.setattr(backends.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(Predictor, "predict", predict)
    speed = compare_model_paths(torch.nn.Conv2d(3, 1, 1), torch.nn.Conv2d(3, 1, 1), batch_size=batch, repeats=n_repeats, warmup=n_warmup)
    assert [fast for fast, _ in calls] == [False, True] * (n_warmup + n_repeats)  # alternating, fp32 first
    assert {shape for _, shape in calls} == {(batch, 256, 256, 3)}
    assert speed.fp32_pairs_s == pytest.approx(batch / 0.5)  # 8 pairs/s: the warm-up batches do not count
    assert speed.fast_pairs_s == pytest.approx(batch / 0.2)
    assert speed.speedup == pytest.approx(2.5)
    assert (speed.repeats, speed.batch_size, speed.channels_last, speed.bf16) == (n_repeats, batch, True, bf16_supported("cpu"))


@pytest.mark.slow
def test_bench_command_on_a_tiny_night(tmp_path, prefect_harness, capsys):
    from flows.cli import main

    root = str(tmp_path / "store")
    rc = main(["bench", "--store", root, "--json", "--captures", "4", "--batch-size", "2", "--repeats", "1",
               "--e2e-runs", "1"])
    assert rc == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)  # stdout carries the JSON object alone
    from anodet_core.store.layout import Store

    assert Store(root).is_bench_depot("bench-4")  # kept out of a real store's schedules
    from flows.bench import BACKEND_NAMES

    per_backend = {f"{p}{k}_{n}" for p in ("", "production_") for k in ("pairs_s", "speedup") for n in BACKEND_NAMES}
    per_backend |= {f"production_f1_delta_{n}" for n in BACKEND_NAMES[1:]}
    assert set(out) == JSON_KEYS | {"night_backend", "cpu_flags", "isa_limit"} | per_backend
    for key in JSON_KEYS - {"f1_delta"}:
        assert out[key] > 0, key
    for key in per_backend - {k for k in per_backend if "f1_delta" in k}:  # every engine measured (test extra installs them)
        assert out[key] > 0, key
    assert out["speedup_eager_fp32"] == 1.0 and out["production_speedup_eager_fp32"] == 1.0
    assert out["night_backend"] in ("torch", "onnx", "openvino", "openvino-int8")
    assert set(out["cpu_flags"]) >= {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    assert "backends side by side" in captured.err and "CPU:" in captured.err
    assert out["speedup"] == pytest.approx(out["model_fast_pairs_s"] / out["model_fp32_pairs_s"], rel=1e-2, abs=1e-3)
    assert out["e2e_over_model"] == pytest.approx(out["e2e_pairs_s"] / out["model_fast_pairs_s"], rel=1e-2, abs=1e-3)  # JSON keeps 3 decimals
    # the store has no production anodfdnet, so the shipped base is production: its fast path scores like fp32
    assert out["f1_delta"] is not None and abs(out["f1_delta"]) <= 0.05, out["f1_delta"]
    assert "stage means per pair" in captured.err

    from anodet_core.store.layout import Store

    caps = Store(root).read_report("captures")
    assert len(caps) == 4 and set(caps["status"]) == {"ok"} and set(caps["depot"]) == {"bench-4"}
    assert np.isfinite(caps["t_infer_ms"]).all()
