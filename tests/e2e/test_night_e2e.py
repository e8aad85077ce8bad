"""A small night end to end through Prefect and a Dask LocalCluster; Zarr and Parquet checked value by value."""

import numpy as np
import pytest
import torch

from anodet_core.config import Settings
from anodet_core.demo_data import DemoSpec, generate_depot
from anodet_core.imaging.prepare import prepare_pair
from anodet_core.models import create_model
from anodet_core.registry import model_store
from anodet_core.registry.model_store import ModelCard
from anodet_core.scoring.postprocess import find_regions, to_native
from anodet_core.scoring.predictor import Predictor
from anodet_core.store.layout import Store
from anodet_core.store.maps import dequantize, open_night_maps, quantize, read_map
from anodet_core.store.query import run_query

pytestmark = pytest.mark.slow

SPEC = DemoSpec(depot="e2e", nights=2, trains=1, cars=1, regions=4, width=320, height=200, anomaly_rate=0.5, seed=3)


@pytest.fixture(scope="module")
def night_store(tmp_path_factory, prefect_harness):
    from flows.nightly import nightly_inspection
    from flows.runners import build_task_runner

    root = str(tmp_path_factory.mktemp("store"))
    store = Store(root)
    generate_depot(store, SPEC)
    nights = store.nights(SPEC.depot)
    # region R04 loses its reference: no history on night 1, and still none on night 2
    store.fs.rm(store.path(store.reference_rel("T001", 1, "R04")))
    # a capture of night 2 changed after the manifest was written: reported as a checksum mismatch, not dropped
    man2 = store.read_manifest(SPEC.depot, nights[1])
    broken = man2[man2.region_id == "R03"].iloc[0]
    store.write_bytes(broken.uri, store.read_bytes(broken.uri)[:-100])
    torch.manual_seed(0)
    model = create_model("anodfdnet", preset="lite", depth=1)
    card = model_store.save_version(store, model, ModelCard(name="anodfdnet", arch="anodfdnet", preset="lite",
                                                            config={"depth": 1}, threshold=0.5))
    model_store.set_alias(store, "anodfdnet", card.version)
    # an untrained model scores ~0.5 everywhere: a threshold above that makes every scored capture normal,
    # so night 2 must take night 1's captures as histories
    settings = Settings(store=root, threshold=0.9, batch_size=2, dask_workers=1)
    flow = nightly_inspection.with_options(task_runner=build_task_runner(settings))
    summaries = [flow(depot=SPEC.depot, night=night, store=root, batch_size=2, task_pairs=3, threshold=0.9) for night in nights]
    return store, nights, summaries, model, broken.capture_id


def test_every_capture_has_one_row_with_the_right_status(night_store):
    store, nights, summaries, _, broken = night_store
    caps = store.read_report("captures")
    for night in nights:
        man = store.read_manifest(SPEC.depot, night)
        got = caps[caps.night == night]
        assert sorted(got.capture_id) == sorted(man.capture_id)
        assert (got.depot == SPEC.depot).all()
    status = dict(zip(caps.capture_id, caps.status))
    assert status[broken] == "checksum_mismatch"
    assert "sha256" in caps.set_index("capture_id").loc[broken, "error"]
    r04 = caps[caps.region_id == "R04"]
    assert (r04.status == "no_history").all() and r04.decision.isna().all()
    ok = caps[caps.status.isin(["ok", "registration_failed"])]
    assert len(ok) == len(caps) - 1 - len(r04)
    assert (ok.model_version == "1").all() and (ok.model_name == "anodfdnet").all()
    assert np.allclose(ok.threshold, 0.9)
    assert summaries[-1].n_captures == len(store.read_manifest(SPEC.depot, nights[-1]))


def test_histories_chain_from_the_previous_nights_normal_captures(night_store):
    """Night 2 takes night 1's captures known to be normal; R01's night-1 capture was decided normal by the model
    but is labelled anomalous (a missed anomaly), so R01 goes back to its reference."""
    store, nights, _, _, _ = night_store
    caps = store.read_report("captures")
    n1 = caps[caps.night == nights[0]].set_index("region_id")
    n2 = caps[caps.night == nights[1]].set_index("region_id")
    labels = store.read_labels(SPEC.depot, nights[0]).set_index("capture_id")["anomalous"]
    assert (n1.loc[["R01", "R02", "R03"], "history_source"] == "reference").all()
    assert (n1.loc[["R01", "R02"], "decision"] == "normal").all()
    assert labels[n1.loc["R01", "capture_id"]] and not labels[n1.loc["R02", "capture_id"]]
    assert n2.loc["R02", "history_source"] == "capture"
    assert n2.loc["R02", "history_capture_id"] == n1.loc["R02", "capture_id"]
    assert n2.loc["R02", "history_uri"] == n1.loc["R02", "uri"]
    assert (n2.loc["R01", "history_source"], n2.loc["R01", "history_uri"]) == ("reference", "references/T001/1/R01.jpg")


def test_zarr_maps_match_the_report_value_by_value(night_store):
    """Through Prefect and Dask. At 0.9 this untrained model finds nothing, so the findings half of the join is
    checked on a night with findings in tests/unit/night/test_pipeline_joins.py (same tasks' functions, a model that finds)."""
    store, nights, _, _, _ = night_store
    caps = store.read_report("captures")
    finds = store.read_report("findings")
    for night in nights:
        g = open_night_maps(store, SPEC.depot, night)
        man = store.read_manifest(SPEC.depot, night)
        assert list(g["capture_ids"][:]) == man.capture_id.tolist()
        assert g.attrs["model_version"] == "1" and g.attrs["threshold"] == pytest.approx(0.9)
        assert g["maps"].dtype == np.uint8 and g["maps"].chunks == (1, SPEC.height, SPEC.width)
        rows = caps[caps.night == night].set_index("capture_id")
        for i, cid in enumerate(g["capture_ids"][:]):
            row = rows.loc[cid]
            assert row.map_index == i
            if row.status not in ("ok", "registration_failed"):
                assert g["written"][i] == 0
                continue
            assert g["written"][i] == 1
            m = read_map(store, SPEC.depot, night, cid)
            assert m.shape == (SPEC.height, SPEC.width)
            assert row.score_max == np.float32(m.max())
            assert row.score_mean == pytest.approx(float(m.mean()), rel=1e-5)
            assert row.anomalous_area_px == int((m > 0.9).sum())
            assert row.n_findings == len(find_regions(m, 0.9, 64)) == int((finds.capture_id == cid).sum())


def test_maps_equal_an_independent_recomputation(night_store):
    """The worker's map equals preprocess + model run here on the same pair (to bf16/threading noise)."""
    store, nights, _, model, _ = night_store
    caps = store.read_report("captures")
    row = caps[(caps.night == nights[1]) & (caps.status == "ok")].iloc[0]
    prep = prepare_pair(store.read_bytes(row.uri), store.read_bytes(row.history_uri))
    pred = Predictor(model, "cpu", fast=True)
    expect = dequantize(quantize(to_native(pred.predict(prep.cur[None], prep.his[None])[0], prep.native_size), "uint8"))
    got = read_map(store, SPEC.depot, row.night, row.capture_id)
    assert np.abs(expect - got).max() <= 2 / 255 + 1e-6


def test_query_over_the_reports(night_store):
    store, nights, _, _, _ = night_store
    df = run_query(store, "select night, status, count(*) n from captures group by all order by all")
    caps = store.read_report("captures")
    expected = caps.groupby(["night", "status"]).size()
    assert {(r.night if isinstance(r.night, str) else r.night.isoformat(), r.status): r.n for r in df.itertuples()} == {
        k: v for k, v in expected.items()
    }
    with pytest.raises(ValueError, match="query failed"):
        run_query(store, "select nope from captures")
