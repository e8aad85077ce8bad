"""Captures without history are scored by their region's single-image model (trained by the retraining flow)."""


import numpy as np
import pandas as pd
import pytest
from PIL import Image

from anodet_core.registry import model_store
from anodet_core.registry.model_store import ModelCard
from anodet_core.scoring.postprocess import find_regions
from anodet_core.single_image import (
    MAP_THRESHOLD,
    labelled_captures,
    map_scale,
    normalise_map,
    prepare_image,
    retrain_region_model,
    score_images,
    single_image_model_name,
)
from anodet_core.store.layout import Store
from anodet_core.store.maps import dequantize, open_night_maps, quantize, read_map

from helpers import add_capture, jpeg

pytestmark = pytest.mark.slow

TINY = {"depth": 0, "widths": [8, 8, 8, 8], "latent_dim": 16, "token_dim": 16, "num_heads": 1, "mlp_dim": 16}
CSA = {"input_size": 128, "hidden_channels": 16}  # real ImageNet Lite0 features, narrow flow, small input
NIGHTS = ["2026-04-01", "2026-04-02", "2026-04-03"]  # labelled: two training nights, one held out
NIGHT = "2026-04-04"  # the inspected night (no labels)
TRAINS = ["T1", "T2", "T3"]
# R0, R1: pinned references, seen by T1 only (too few normal captures for a single-image model); R2: every
# train, no reference (its captures have no history until a night is reported), enough normal captures;
# R3: shows up on the inspected night only (no reference, no model)
VISITS = {"R0": ["T1"], "R1": ["T1"], "R2": TRAINS}



def _depot(store: Store) -> None:
    """Regions seen by the trains of VISITS on 3 labelled nights (anomalies: bright squares; R2 has 4 normal
    captures on the 2 training nights, 2 normal and 1 anomalous on the held-out one), then an unlabelled night
    that also shows the new region type R3."""
    rng = np.random.default_rng(0)
    bases = {}
    for r in [*VISITS, "R3"]:
        small = rng.integers(40, 120, (16, 16, 3), dtype=np.uint8)
        bases[r] = np.asarray(Image.fromarray(small).resize((256, 256), Image.Resampling.BICUBIC))
    for r in ("R0", "R1"):
        store.write_bytes(store.reference_rel("T1", 1, r), jpeg(bases[r]))
    for n, night in enumerate([*NIGHTS, NIGHT]):
        man, lab = [], []
        visits = {**VISITS, "R3": ["T1"]} if night == NIGHT else VISITS
        for ti, t in enumerate(TRAINS):
            for ri, r in enumerate(visits):
                if t not in visits[r]:
                    continue
                cid = f"c{n}-{t}-{r}"
                img = np.clip(bases[r].astype(int) + rng.integers(-4, 5, (256, 256, 3)), 0, 255).astype(np.uint8)
                row, label = add_capture(store, "d", night, cid, img, (ti + ri + n) % 3 == 0, rng, train_id=t,
                                         region_id=r, minute=ti * 10 + ri)
                man.append(row)
                lab.append(label)
        store.write_manifest("d", night, man)
        if night != NIGHT:
            store.write_labels("d", night, lab)


@pytest.fixture(scope="module")
def night(tmp_path_factory, prefect_harness):
    from flows.nightly import nightly_inspection
    from flows.retrain import retrain

    root = str(tmp_path_factory.mktemp("single-night"))
    store = Store(root)
    _depot(store)
    res = retrain(depot="d", store=root, overrides=TINY, epochs=2, max_minutes=0, seed=0, single_image_epochs=3,
                  single_image_overrides=CSA, single_image_max_minutes=0)
    summary = nightly_inspection(depot="d", night=NIGHT, store=root)
    return store, root, res, summary


def test_map_normalisation_and_names():
    card = ModelCard(name="csaflow-R1", arch="csaflow", threshold=1.0, extra={"normal_map_p999": 2.0})
    assert map_scale(card) == 4.0  # the normal p99.9 level maps to 0.5
    raw = np.array([[0.0, 2.0, 4.0, 8.0, -1.0, np.nan]], np.float32)
    got = normalise_map(raw, map_scale(card))
    assert got.dtype == np.float32 and got.shape == raw.shape
    assert got.tolist() == [[0.0, 0.5, 1.0, 1.0, 0.0, 1.0]]
    assert float(normalise_map(np.float32(2.0), 4.0)) == MAP_THRESHOLD
    for bad in ({}, {"normal_map_p999": 0.0}, {"normal_map_p999": float("nan")}, {"normal_map_p999": "x"}):
        with pytest.raises(ValueError, match="normal_map_p999"):
            map_scale(ModelCard(name="m", arch="csaflow", extra=bad))
    with pytest.raises(ValueError):
        normalise_map(raw, 0.0)
    assert single_image_model_name("csaflow", "R01") == "csaflow-R01"
    assert single_image_model_name("anovit", "R01") == "anovit-R01"
    with pytest.raises(ValueError):
        single_image_model_name("csaflow", "../R01")
    with pytest.raises(ValueError):
        single_image_model_name("nope", "R01")


def test_retrain_flow_trains_one_model_per_region(night):
    store, _, res, _ = night
    # the paired candidate (the shipped base fine-tuned) against production, the base: promoted only if better
    assert res["production_version"] == "base" and res["production_value"] is not None
    assert res["promoted"] == (res["candidate_value"] >= res["production_value"] + res["margin"])
    rows = {r["region_id"]: r for r in res["single_image"]}
    assert sorted(rows) == ["R2"]  # R0, R1: 1 normal capture in the training nights, fewer than 4
    assert model_store.get_alias(store, "csaflow-R0") is None
    for region, r in rows.items():
        assert r["name"] == f"csaflow-{region}" and r["candidate_version"] == "1"
        assert r["promoted"] and r["reason"] == "no production version yet"
        assert r["n_train_normal"] == 4 and (r["n_test_normal"], r["n_test_anomalous"]) == (2, 1)
        assert 0.0 <= r["candidate_value"] <= 1.0  # both classes on the held-out night
        assert model_store.get_alias(store, r["name"]) == "1"
        card = model_store.resolve(store, r["name"])[1]
        assert card.arch == "csaflow" and card.config == CSA and card.extra["region_id"] == region
        assert card.extra["normal_map_p999"] > 0 and card.extra["promotion"]["promoted"] is True
        assert card.metrics["image_auroc"] == pytest.approx(r["candidate_value"])


def test_no_history_capture_is_scored_by_the_region_model(night):
    store, _, _, summary = night
    caps = store.read_report("captures")
    caps = caps[caps.night == NIGHT].set_index("capture_id")
    finds = store.read_report("findings")
    g = open_night_maps(store, "d", NIGHT)
    assert dict(g.attrs["single_models"]) == {"R2": "csaflow-R2:1"}  # R0/R1 have references, R3 no model
    ids = list(g["capture_ids"][:])
    card = model_store.resolve(store, "csaflow-R2:1")[1]
    model, _ = model_store.load(store, "csaflow-R2:1")
    r2 = caps[caps.region_id == "R2"]
    assert len(r2) == 3
    for cid, row in r2.iterrows():
        assert row.status == "ok" and pd.isna(row.history_source) and pd.isna(row.history_uri)
        assert (row.model_name, row.model_version) == ("csaflow-R2", "1")
        assert all(pd.isna(row[c]) for c in ("reg_method", "reg_ok", "reg_inliers", "reg_residual_px", "t_register_ms"))
        assert row.threshold == pytest.approx(MAP_THRESHOLD) and row.map_uri
        i = ids.index(cid)
        assert row.map_index == i and g["written"][i] == 1
        m = read_map(store, "d", NIGHT, cid)
        assert m.shape == (256, 256)
        assert row.score_max == np.float32(m.max())
        assert row.score_mean == pytest.approx(float(m.mean()), rel=1e-5)
        regions = find_regions(m, MAP_THRESHOLD, 64)
        assert row.anomalous_area_px == int((m > MAP_THRESHOLD).sum())
        assert row.n_findings == len(regions) == int((finds.capture_id == cid).sum())
        assert (finds[finds.capture_id == cid].model_name == "csaflow-R2").all()
        # independent recomputation: decode + resize, model, normalise by twice the normal pixel p99.9
        img, native = prepare_image(store.read_bytes(row.uri), 128)
        score, raw = score_images(model, img[None])
        norm = normalise_map(raw[0], 2 * card.extra["normal_map_p999"])
        expect = np.asarray(Image.fromarray(quantize(norm, "uint8")).resize(native, Image.Resampling.BILINEAR))
        assert np.abs(dequantize(expect) - m).max() <= 2 / 255 + 1e-6
        # decision: image score above the card's threshold OR a finding in the map
        anomalous = float(score[0]) > card.threshold or row.n_findings > 0
        assert row.decision == ("anomalous" if anomalous else "normal")
    r3 = caps[caps.region_id == "R3"]
    assert len(r3) == 1 and (r3.status == "no_history").all() and r3.decision.isna().all()
    assert (r3.model_name == "anodfdnet").all() and g["written"][ids.index(r3.index[0])] == 0
    paired = caps[caps.region_id.isin(["R0", "R1"])]
    assert (paired.history_source == "reference").all() and (paired.model_name == "anodfdnet").all()
    assert summary.by_status.get("no_history") == 1


def test_disabled_single_image_keeps_no_history(night, monkeypatch):
    """ANODET_SINGLE_IMAGE="" (Settings.single_image): nothing pinned, no-history captures stay no_history."""
    from anodet_core.config import Settings
    from anodet_core.night.batch import process_batch
    from tasks.inspection import plan_night_task

    store, root, _, _ = night
    monkeypatch.setenv("ANODET_SINGLE_IMAGE", "")
    settings = Settings.from_env(store=root)
    assert settings.single_image == ""
    plan = plan_night_task.fn(store, "d", NIGHT, settings, "run")  # in process: no flow, no cluster
    assert plan.single_models == {} and dict(open_night_maps(store, "d", NIGHT, rel=plan.maps_rel).attrs["single_models"]) == {}
    jobs = [j for j in plan.jobs if not j.history_uri]
    assert sorted(j.capture["region_id"] for j in jobs) == ["R2", "R2", "R2", "R3"]
    res = process_batch(store, "d", NIGHT, jobs, plan.model_ref, settings.with_(threshold=plan.threshold), "run",
                        plan.single_models)
    assert [r.status for r in res.captures] == ["no_history"] * 4 and not res.findings
    assert {r.model_name for r in res.captures} == {"anodfdnet"}
    # the same jobs with the model pinned (what the flow does by default) are scored by it
    on = plan_night_task.fn(store, "d", NIGHT, settings.with_(single_image="csaflow"), "run")
    assert on.single_models == {"R2": "csaflow-R2:1"}


def test_region_model_is_kept_without_evidence(night):
    store, _, _, _ = night
    train, test = labelled_captures(store, "d", NIGHTS[:2]), labelled_captures(store, "d", NIGHTS[2:])
    res = retrain_region_model(store, "d", "R2", train, test, overrides=CSA, epochs=1, margin=2.0)  # unbeatable margin
    assert (res.candidate_version, res.production_version, res.promoted) == ("2", "1", False)
    assert model_store.get_alias(store, "csaflow-R2") == "1"
    card = model_store.resolve(store, "csaflow-R2:2")[1]
    assert card.extra["promotion"]["promoted"] is False and card.extra["promotion"]["production_value"] is not None


def test_second_opinion_scores_paired_captures_without_changing_decisions(night):
    """ANODET_SECOND_OPINION: captures WITH history in a region that has a single-image model also get its image
    score (report columns second_*); the paired model's maps and decisions are unchanged; off by default."""
    import dataclasses

    from anodet_core.config import Settings
    from anodet_core.night.batch import process_batch
    from anodet_core.night.plan import write_reports
    from anodet_core.store.schemas import CaptureRow, row_dict
    from tasks.inspection import plan_night_task

    store, root, _, _ = night
    model, card = model_store.load(store, "csaflow-R2:1")  # R0 (paired: it has a reference) gets a model too
    r0 = model_store.save_version(store, model, dataclasses.replace(card, name="csaflow-R0", version=""))
    model_store.set_alias(store, "csaflow-R0", r0.version)
    settings = Settings.from_env(store=root)
    assert settings.second_opinion is False
    assert "R0" not in plan_night_task.fn(store, "d", NIGHT, settings, "run").single_models  # only no-history regions
    on = settings.with_(second_opinion=True)
    plan = plan_night_task.fn(store, "d", NIGHT, on, "run")
    assert plan.single_models == {"R0": f"csaflow-R0:{r0.version}", "R2": "csaflow-R2:1"}
    paired = [j for j in plan.jobs if j.history_uri]
    assert sorted(j.capture["region_id"] for j in paired) == ["R0", "R1"]
    rows = {}
    for s in (settings, on):
        res = process_batch(store, "d", NIGHT, paired, plan.model_ref, s.with_(threshold=plan.threshold), "run",
                            plan.single_models)
        rows[s.second_opinion] = {r.capture_id: row_dict(r) for r in res.captures}
    for cid, row in rows[True].items():
        off = rows[False][cid]
        assert (row["decision"], row["score_max"], row["n_findings"]) == (off["decision"], off["score_max"], off["n_findings"])
        assert all(off[k] is None for k in off if k.startswith("second_"))
        if row["region_id"] == "R1":  # no single-image model for R1
            assert all(row[k] is None for k in row if k.startswith("second_"))
            continue
        img, _ = prepare_image(store.read_bytes(row["uri"]), 128)
        expect = float(score_images(model, img[None], maps=False)[0][0])
        assert row["second_model"] == f"csaflow-R0:{r0.version}"
        assert row["second_score"] == pytest.approx(expect, rel=1e-5)
        assert row["second_anomalous"] == (expect > card.threshold)
    write_reports(store, "d", NIGHT, [CaptureRow(**r) for r in rows[True].values()], [])
    rep = store.read_report("captures")
    rep = rep[rep.night == NIGHT].set_index("capture_id")
    for cid, row in rows[True].items():
        assert pd.isna(rep.loc[cid, "second_model"]) == (row["region_id"] == "R1")
        if row["region_id"] == "R0":
            assert rep.loc[cid, "second_score"] == pytest.approx(row["second_score"], rel=1e-6)
            assert bool(rep.loc[cid, "second_anomalous"]) == row["second_anomalous"]
    # a second-opinion model that cannot be loaded costs the second opinion only, never the paired results
    import os

    broken = model_store.save_version(store, model, dataclasses.replace(card, name="csaflow-R0", version=""))
    os.remove(store.path(f"{store.model_version_rel('csaflow-R0', broken.version)}/{model_store.WEIGHTS}"))
    model_store.set_alias(store, "csaflow-R0", broken.version)
    plan = plan_night_task.fn(store, "d", NIGHT, on, "run")
    assert plan.single_models["R0"] == f"csaflow-R0:{broken.version}"
    res = process_batch(store, "d", NIGHT, paired, plan.model_ref, on.with_(threshold=plan.threshold), "run",
                        plan.single_models)
    assert len(res.captures) == len(paired)
    for r in res.captures:
        assert (r.status, r.decision) == (rows[True][r.capture_id]["status"], rows[True][r.capture_id]["decision"])
    assert all(r.second_model is None and r.second_score is None and r.second_anomalous is None for r in res.captures)
