"""One post-processing path (anodet_core.scoring.postprocess): the night and `anodet evaluate` agree pair by pair; regions;
operating-point precedence."""

from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

from anodet_core.config import Settings
from anodet_core.evaluation.evaluate import evaluate_pairs
from anodet_core.night import batch as pipeline
from anodet_core.registry import model_store
from anodet_core.registry.model_store import ModelCard
from anodet_core.scoring.postprocess import (
    DEFAULT_MIN_AREA,
    Finding,
    OperatingPoint,
    capture_score,
    find_regions,
    operating_point,
    postprocess,
    upsample_u8,
)
from anodet_core.scoring.predictor import Predictor
from anodet_core.store.layout import Store
from anodet_core.store.maps import open_night_maps, quantize
from anodet_core.store.schemas import row_dict
from anodet_core.training import LabelledPair

from helpers import add_capture, jpeg

NIGHT = "2026-05-01"
W, H = 320, 240  # native capture size (not the model's 256 x 256)
CARD_MIN_AREA = 40  # native px: the 50x50 squares are findings, the 5x5 spots are not


class DiffMap(torch.nn.Module):
    """A deterministic "model": 1 where cur and his differ by more than ~45 grey levels (channel mean), 0 where
    they differ by less than ~25, linear in between."""

    def forward(self, cur: torch.Tensor, his: torch.Tensor) -> torch.Tensor:
        d = (cur - his).abs().mean(1, keepdim=True)  # inputs in [-1, 1]
        return ((d - 0.2) * 4).clamp(0, 1)


def _card() -> ModelCard:
    return ModelCard(name="diffmap", arch="diffmap", threshold=0.5, min_finding_area=CARD_MIN_AREA)


@pytest.fixture
def depot(tmp_path, monkeypatch):
    """One night of 4 regions with references: c0 a bright square (anomalous), c1 a small spot only (normal
    label), c2 square + spot, c3 nothing; the store's "diffmap" model is :class:`DiffMap`."""
    store = Store(str(tmp_path))
    rng = np.random.default_rng(7)
    man, labels = [], []
    for i, (square, spot) in enumerate([(True, False), (False, True), (True, True), (False, False)]):
        region = f"R{i}"
        small = rng.integers(40, 120, (12, 16, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(small).resize((W, H), Image.Resampling.BICUBIC))
        store.write_bytes(store.reference_rel("T1", 1, region), jpeg(base))
        img = np.clip(base.astype(int) + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8)
        if spot:
            img[6:11, 292:297] = 255  # 25 native px, away from any square (squares start at y, x >= 20, x < 230)
        row, label = add_capture(store, "d", NIGHT, f"c{i}", img, square, rng, train_id="T1", region_id=region, minute=i)
        man.append(row)
        labels.append(label)
    store.write_manifest("d", NIGHT, man)
    card = model_store.save_version(store, DiffMap(), _card())
    model_store.set_alias(store, "diffmap", card.version)
    monkeypatch.setattr(pipeline, "load", lambda st, ref, device="cpu": (DiffMap(), model_store.resolve_card(st, ref)))
    monkeypatch.setattr(pipeline, "_MODELS", {})
    return store, {lab["capture_id"]: lab for lab in labels}


def test_night_and_evaluate_give_the_same_maps_findings_and_decisions(depot):
    from tasks.inspection import plan_night_task

    store, labels = depot
    settings = Settings(store=store.root, model="diffmap", batch_size=2, prep_processes=0, fast=False, single_image="")
    plan = plan_night_task.fn(store, "d", NIGHT, settings, "run")
    assert (plan.threshold, plan.min_finding_area) == (0.5, CARD_MIN_AREA)  # the card's operating point, pinned
    g = open_night_maps(store, "d", NIGHT, rel=plan.maps_rel)
    assert (g.attrs["threshold"], g.attrs["min_finding_area"]) == (0.5, CARD_MIN_AREA)
    night_settings = settings.with_(threshold=plan.threshold, min_finding_area=plan.min_finding_area)  # as the flow
    res = pipeline.process_batch(store, "d", NIGHT, plan.jobs, plan.model_ref, night_settings, "run")
    rows = {r.capture_id: row_dict(r) for r in res.captures}
    assert {r["status"] for r in rows.values()} <= {"ok", "registration_failed"}  # both scored
    assert all(0.95 <= r["history_coverage"] <= 1.0 for r in rows.values())  # the references show the same view

    scored = {}
    pairs = [LabelledPair(j.capture["capture_id"], j.capture["uri"], j.history_uri, labels[j.capture["capture_id"]]["mask_uri"])
             for j in plan.jobs]
    out = evaluate_pairs(Predictor(DiffMap(), "cpu", fast=False), pairs, operating_point(_card(), Settings()),
                         batch_size=3, read=store.read_bytes, on_scored=lambda p, s: scored.__setitem__(p.key, s))
    assert sorted(scored) == sorted(rows)

    g = open_night_maps(store, "d", NIGHT, rel=plan.maps_rel)
    ids = list(g["capture_ids"][:])
    for cid, row in rows.items():
        s = scored[cid]
        assert np.array_equal(np.asarray(g["maps"][ids.index(cid), :H, :W]), s.stored), cid  # the same stored map
        assert row["decision"] == s.decision, cid
        assert {k: row[k] for k in asdict(s.figures)} == asdict(s.figures), cid
        night_finds = [Finding(f.x0, f.y0, f.x1, f.y1, f.area_px, f.peak_score, f.mean_score)
                       for f in sorted((f for f in res.findings if f.capture_id == cid), key=lambda f: f.finding_id)]
        assert night_finds == s.findings, cid

    # the case really decides something: squares are findings, the spots are regions below the minimum area
    assert [rows[f"c{i}"]["decision"] for i in range(4)] == ["anomalous", "normal", "anomalous", "normal"]
    for cid in ("c0", "c2"):
        assert len(scored[cid].findings) == 1 and scored[cid].findings[0].area_px >= 2000
    for cid in ("c1", "c2"):
        spot = [f for f in find_regions(scored[cid].native(), 0.5, 1) if f.x0 >= 280]
        assert len(spot) == 1 and 1 <= spot[0].area_px < CARD_MIN_AREA, (cid, spot)
    assert (out["threshold"], out["min_area"]) == (0.5, CARD_MIN_AREA)
    assert out["false_alarms"] == 0 and out["decision_recall"] == 1.0 and out["decision_precision"] == 1.0
    assert out["n_samples"] == 4 and out["n_anomalous"] == 2
    # ranked by the capture score, which knows the minimum area: c1's spot, as bright as a square, ranks below them
    # (the map maximum would tie it with the squares: 0.75)
    assert out["image_auroc"] == 1.0
    assert out["f1_at_op"] > 0.9 and out["f1"] > 0.9  # the squares' masks are what the map finds


def test_find_regions_boxes_connectivity_min_area_and_order():
    m = np.zeros((10, 12), np.float32)
    m[1, 1], m[2, 2], m[3, 3] = 0.7, 0.8, 0.9  # a diagonal: one region with 8-connectivity, three with 4
    m[6:8, 6:9] = 0.6
    m[7, 8] = 0.95
    m[8, 6] = 0.5  # touches the block but is not above the threshold
    m[0, 11] = 0.99  # a single pixel
    m[5, 0] = 0.5
    got = find_regions(m, 0.5, 1)
    assert [(f.x0, f.y0, f.x1, f.y1, f.area_px) for f in got] == [(11, 0, 12, 1, 1), (6, 6, 9, 8, 6), (1, 1, 4, 4, 3)]
    assert [f.peak_score for f in got] == pytest.approx([0.99, 0.95, 0.9])
    assert [f.mean_score for f in got] == pytest.approx([0.99, (5 * 0.6 + 0.95) / 6, 0.8])
    assert [f.area_px for f in find_regions(m, 0.5, 3)] == [6, 3]
    assert [f.area_px for f in find_regions(m, 0.5, 4)] == [6]
    assert [f.area_px for f in find_regions(m, 0.65, 1)] == [1, 1, 3]  # the block keeps its 0.95 pixel only
    assert find_regions(np.zeros((4, 4)), 0.5, 1) == []


def test_operating_point_settings_over_card_over_64(monkeypatch):
    bare = ModelCard(name="m", arch="anodfdnet", threshold=0.4)
    calibrated = ModelCard(name="m", arch="anodfdnet", threshold=0.4, min_finding_area=20)
    assert operating_point(bare, Settings()) == OperatingPoint(0.4, DEFAULT_MIN_AREA) == OperatingPoint(0.4, 64)
    assert operating_point(calibrated, Settings()) == OperatingPoint(0.4, 20)
    assert operating_point(calibrated, Settings(min_finding_area=5)) == OperatingPoint(0.4, 5)
    assert operating_point(calibrated, Settings(threshold=0.7)) == OperatingPoint(0.7, 20)
    assert operating_point(bare, Settings(threshold=0.0, min_finding_area=1)) == OperatingPoint(0.0, 1)
    monkeypatch.setenv("ANODET_MIN_FINDING_AREA", "")
    assert Settings.from_env().min_finding_area is None
    monkeypatch.setenv("ANODET_MIN_FINDING_AREA", "12")
    assert operating_point(calibrated, Settings.from_env()) == OperatingPoint(0.4, 12)
    for bad in (dict(threshold=1.0, min_area=1), dict(threshold=0.5, min_area=0), dict(threshold=0.5, min_area=2.5)):
        with pytest.raises(ValueError):
            OperatingPoint(**bad)


@pytest.mark.parametrize("dtype", ["uint8", "float16"])
def test_postprocess_measures_the_stored_map(dtype):
    score = torch.zeros(64, 64)
    score[10:20, 30:40] = 0.9
    score[50, 5] = 0.7  # one model pixel: a few native px, below the minimum area
    s = postprocess(score, (200, 150), OperatingPoint(0.5, 30), dtype)
    assert s.stored.shape == (150, 200) and s.stored.dtype == np.dtype(dtype)
    native = s.native()
    assert s.figures.score_max == pytest.approx(float(native.max()))
    assert s.figures.score_mean == pytest.approx(float(native.astype(np.float64).mean()), rel=1e-6)
    assert s.figures.anomalous_area_px == int((native > 0.5).sum())
    assert s.findings == find_regions(native, 0.5, 30) and len(s.findings) == 1 and s.decision == "anomalous"
    assert s.figures.n_findings == 1 and len(find_regions(native, 0.5, 1)) == 2
    quiet = postprocess(score * 0.5, (200, 150), OperatingPoint(0.5, 1), dtype)  # peak 0.45: nothing to label
    assert quiet.findings == [] and quiet.decision == "normal" and quiet.figures.anomalous_area_px == 0


def test_upsample_u8_box_equals_a_whole_image_resize_within_one_level():
    q = np.zeros((64, 64), np.uint8)
    q[20:30, 40:50] = quantize(np.linspace(0.3, 1.0, 100, dtype=np.float32).reshape(10, 10), "uint8")
    full = np.asarray(Image.fromarray(q).resize((320, 240), Image.Resampling.BILINEAR))
    got = upsample_u8(q, (320, 240))
    assert np.abs(got.astype(int) - full.astype(int)).max() <= 1 and got.any()
    assert not upsample_u8(np.zeros((64, 64), np.uint8), (320, 240)).any()


def test_capture_score_ignores_specks_smaller_than_a_finding():
    m = np.zeros((64, 64), np.float32)
    m[5, 5] = 0.9  # one hot pixel
    m[20:30, 20:30] = 0.6  # 100 px region
    m[24:26, 24:26] = 0.7  # a brighter 4 px core inside it
    assert capture_score(m, 1) == pytest.approx(0.9)
    assert capture_score(m, 4) == pytest.approx(0.7)
    assert capture_score(m, 50) == pytest.approx(0.6)
    assert capture_score(m, 100) == pytest.approx(0.6)
    assert capture_score(m, 101) == pytest.approx(0.0)  # only the whole map (level 0) is that large
    diag = np.zeros((8, 8), np.float32)
    diag[np.arange(8), np.arange(8)] = 0.8  # a diagonal line: one region under 8-connectivity, as find_regions
    assert capture_score(diag, 8) == pytest.approx(0.8)
    assert len(find_regions(diag, 0.5, 8)) == 1


def test_capture_score_agrees_with_the_decision():
    rng = np.random.default_rng(0)
    op = OperatingPoint(0.5, 30)
    for _ in range(40):
        m = np.zeros((64, 64), np.float32)
        for _ in range(rng.integers(0, 4)):
            y, x, r = rng.integers(0, 60), rng.integers(0, 60), rng.integers(1, 9)
            m[y : y + r, x : x + r] = rng.uniform(0.2, 1.0)
        scored = postprocess(torch.from_numpy(m), (64, 64), op)  # native = model size: no resampling
        assert scored.anomalous == (scored.figures.capture_score > op.threshold)
        assert scored.figures.capture_score <= scored.figures.score_max + 1e-6
