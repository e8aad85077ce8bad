"""A night's Zarr maps joined with its Parquet reports, on a night that has findings.

The night goes through the functions the nightly flow's tasks run (plan_night_task's body, process_batch per
batch of ``task_pairs``, write_reports) with a production model that finds things: the registered
``classical_diff`` baseline (high where the standardised |cur - his| is large), saved to and loaded from the
store like any version. The night mixes capture sizes, has a capture whose history is pure noise (registration
fails), one without history, and runs with uint8 and float16 maps, on a local folder and on S3 (moto).
"""

from __future__ import annotations

import datetime as dt
import os
import uuid

import numpy as np
import pytest
from PIL import Image

from anodet_core.config import Settings
from anodet_core.imaging.io import sha256
from anodet_core.models import create_model
from anodet_core.night.batch import process_batch
from anodet_core.night.plan import split_jobs, write_reports
from anodet_core.registry import model_store
from anodet_core.registry.model_store import ModelCard
from anodet_core.scoring.postprocess import find_regions
from anodet_core.store.layout import Store
from anodet_core.store.maps import open_night_maps, read_map

from helpers import jpeg

DEPOT, NIGHT = "joins", "2026-06-01"
MIN_AREA = 40  # native px (the card's)
# capture id -> (width, height), squares pasted into cur (x, y, side), what its history is
CAPTURES = {
    "c0": ((320, 240), [(60, 100, 50)], "reference"),
    "c1": ((200, 150), [], "reference"),
    "c2": ((256, 192), [(170, 30, 40)], "reference"),
    "c3": ((160, 240), [], "noise"),  # registration fails: scored against the unaligned noise, flagged
    "c4": ((240, 180), [], None),  # no reference: no history
}


def _scene(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    small = rng.integers(30, 200, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))


def _build(store: Store) -> None:
    rng = np.random.default_rng(11)
    rows = []
    for k, (cid, ((w, h), squares, history)) in enumerate(CAPTURES.items()):
        region = f"R{k}"
        base = _scene(w, h, rng)
        if history == "reference":
            store.write_bytes(store.reference_rel("T1", 1, region), jpeg(base))
        elif history == "noise":
            store.write_bytes(store.reference_rel("T1", 1, region), jpeg(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
        img = np.clip(base.astype(int) + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8)
        for x, y, s in squares:
            img[y : y + s, x : x + s] = (250, 250, 40)
        data = jpeg(img)
        uri = store.capture_rel(DEPOT, NIGHT, cid)
        store.write_bytes(uri, data)
        rows.append(dict(capture_id=cid, depot=DEPOT, night=NIGHT, train_id="T1", car=1, region_id=region,
                         captured_at=dt.datetime(2026, 6, 1, 1, k, tzinfo=dt.UTC), uri=uri, sha256=sha256(data),
                         width=w, height=h))
    store.write_manifest(DEPOT, NIGHT, rows)
    model = create_model("classical_diff")
    card = model_store.save_version(store, model, ModelCard(name="cdiff", arch="classical_diff", preset="default",
                                                            threshold=0.5, min_finding_area=MIN_AREA))
    model_store.set_alias(store, "cdiff", card.version)


def _run_night(store: Store, settings: Settings):
    """What nightly_inspection does, without Prefect and Dask: plan, batches of task_pairs, reports."""
    from tasks.inspection import plan_night_task

    plan = plan_night_task.fn(store, DEPOT, NIGHT, settings, "run-1")
    settings = settings.with_(threshold=plan.threshold, min_finding_area=plan.min_finding_area)
    captures, findings = [], []
    for batch in split_jobs(plan.jobs, settings.task_pairs):
        res = process_batch(store, DEPOT, NIGHT, batch, plan.model_ref, settings, "run-1", plan.single_models)
        captures += res.captures
        findings += res.findings
    write_reports(store, DEPOT, NIGHT, captures, findings)
    return plan


def _check_night(store: Store, dtype: str) -> None:
    g = open_night_maps(store, DEPOT, NIGHT)
    man = store.read_manifest(DEPOT, NIGHT)
    assert list(g["capture_ids"][:]) == man.capture_id.tolist() == list(CAPTURES)
    assert g["widths"][:].tolist() == [s[0] for s, _, _ in CAPTURES.values()]
    assert g["heights"][:].tolist() == [s[1] for s, _, _ in CAPTURES.values()]
    assert g["maps"].shape == (len(CAPTURES), 240, 320) and g["maps"].dtype == np.dtype(dtype)
    assert g.attrs["dtype"] == dtype and g.attrs["threshold"] == 0.5 and g.attrs["min_finding_area"] == MIN_AREA

    caps = store.read_report("captures").set_index("capture_id")
    finds = store.read_report("findings")
    assert sorted(caps.index) == sorted(CAPTURES) and (caps.night == NIGHT).all()
    assert caps.status.to_dict() == {"c0": "ok", "c1": "ok", "c2": "ok", "c3": "registration_failed", "c4": "no_history"}
    assert caps.decision.fillna("-").to_dict() == {"c0": "anomalous", "c1": "normal", "c2": "anomalous", "c3": "anomalous",
                                                   "c4": "-"}
    n_found = 0
    for i, (cid, ((w, h), squares, _)) in enumerate(CAPTURES.items()):
        row = caps.loc[cid]
        assert row.map_index == i
        if row.status == "no_history":
            assert g["written"][i] == 0 and np.isnan(row.score_max)
            with pytest.raises(KeyError, match="not scored"):
                read_map(store, DEPOT, NIGHT, cid)
            continue
        assert g["written"][i] == 1
        raw = np.asarray(g["maps"][i])
        assert not raw[h:].any() and not raw[:, w:].any()  # padding of smaller captures stays zero
        m = read_map(store, DEPOT, NIGHT, cid)
        assert m.shape == (h, w) and m.dtype == np.float32
        expect = raw[:h, :w].astype(np.float32) * (np.float32(1 / 255) if dtype == "uint8" else 1)
        assert np.array_equal(m, expect)
        # the report row is measured on exactly this map
        assert row.score_max == np.float32(m.max()), cid
        assert row.score_mean == pytest.approx(float(m.astype(np.float64).mean()), rel=1e-5, abs=1e-7), cid
        assert row.anomalous_area_px == int((m > 0.5).sum()), cid
        assert row.threshold == np.float32(0.5)
        regions = find_regions(m, 0.5, MIN_AREA)
        mine = finds[finds.capture_id == cid].sort_values("finding_id")
        assert row.n_findings == len(regions) == len(mine), cid
        assert mine.finding_id.tolist() == list(range(len(mine)))
        for f, r in zip(mine.itertuples(), regions):
            assert (f.x0, f.y0, f.x1, f.y1, f.area_px) == (r.x0, r.y0, r.x1, r.y1, r.area_px), cid
            assert f.peak_score == np.float32(r.peak_score) and f.mean_score == pytest.approx(r.mean_score, rel=1e-6)
            assert f.region_id == row.region_id and f.model_name == "cdiff" and f.run_id == "run-1"
        assert (row.decision == "anomalous") == bool(regions), cid
        n_found += len(regions)
        # the pasted squares are what was found, in native px of this capture
        for x, y, s in squares:
            top = regions[0]
            assert top.x0 <= x + s // 2 < top.x1 and top.y0 <= y + s // 2 < top.y1, (cid, top)
            assert 0.5 * s * s <= top.area_px <= 2.5 * s * s, (cid, top)
    assert n_found >= 3 and len(finds) == n_found
    bad = caps.loc["c3"]
    assert not bad.reg_ok and bad.reg_method == "identity" and bad.map_uri == caps.loc["c0"].map_uri


def _settings(root: str, monkeypatch, dtype: str) -> Settings:
    monkeypatch.setenv("ANODET_MAP_DTYPE", dtype)  # as a deployment sets it; the flow reads Settings.from_env
    s = Settings.from_env(store=root, model="cdiff", batch_size=2, task_pairs=3, prep_processes=0, single_image="")
    assert s.map_dtype == dtype
    return s


@pytest.mark.parametrize("dtype", ["uint8", "float16"])
def test_local_night_maps_and_reports_agree(tmp_path, monkeypatch, dtype):
    store = Store(str(tmp_path / "store"))
    _build(store)
    _run_night(store, _settings(store.root, monkeypatch, dtype))
    _check_night(store, dtype)


def test_every_batch_gives_the_kept_heap_back(tmp_path, monkeypatch):
    """Workers keep freed memory within a batch and release it after each (Dask pauses on resident memory)."""
    import anodet_core.night.batch as batch

    released = []
    monkeypatch.setattr(batch, "release_freed_memory", lambda: released.append(1))
    store = Store(str(tmp_path / "store"))
    _build(store)
    settings = _settings(store.root, monkeypatch, "uint8")
    _run_night(store, settings)
    assert settings.task_pairs == 3 and len(released) == 2  # batches c0-c2 and c3 (scored) + c4 (no history)
    _check_night(store, "uint8")


def test_a_rerun_replaces_the_maps_and_the_reports(tmp_path, monkeypatch):
    store = Store(str(tmp_path / "store"))
    _build(store)
    _run_night(store, _settings(store.root, monkeypatch, "float16"))
    _run_night(store, _settings(store.root, monkeypatch, "uint8"))
    _check_night(store, "uint8")


# ------------------------------------------------------------------------------------------ S3 (moto)

_AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION",
             "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_CONFIG_FILE",
             "AWS_SHARED_CREDENTIALS_FILE")


@pytest.fixture
def s3_bucket(moto_endpoint, tmp_path, monkeypatch):
    """A fresh bucket; the endpoint, keys and region reach s3fs (and so the Store) through the environment only."""
    for k in _AWS_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    import boto3
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"anodet-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    yield bucket
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.parametrize("dtype", ["uint8", "float16"])
def test_s3_night_maps_and_reports_agree(s3_bucket, monkeypatch, dtype):
    import boto3

    store = Store(f"s3://{s3_bucket}/store")
    assert not store.is_local
    _build(store)
    plan = _run_night(store, _settings(store.root, monkeypatch, dtype))
    gen = plan.generation
    assert plan.maps_rel == f"maps/{DEPOT}/{NIGHT}/{gen}.zarr" and plan.maps_url == f"s3://{s3_bucket}/store/{plan.maps_rel}"
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"], region_name="us-east-1")
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="store/")["Contents"]}
    assert f"store/{plan.maps_rel}/maps/c/0/0/0" in keys  # the map rows really are objects in the bucket
    assert f"store/reports/findings/depot={DEPOT}/night={NIGHT}/part-{gen}.parquet" in keys
    assert f"store/reports/_nights/depot={DEPOT}/night={NIGHT}.json" in keys  # the night's commit
    _check_night(store, dtype)
