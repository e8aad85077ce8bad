"""The demo depot generator: store layout, manifests and labels, masks, consistency, determinism, pair folders."""

from __future__ import annotations

import hashlib
import io
import itertools
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage as ndi

from anodet_core.demo_data import (
    ANOMALY_TYPES,
    DemoSpec,
    RegionScene,
    _rng,
    capture_id,
    generate_depot,
    region_ids,
    train_ids,
    write_pair_folders,
)
from anodet_core.store.layout import Store
from anodet_core.store.schemas import LABELS_SCHEMA, MANIFEST_SCHEMA

TINY = dict(width=320, height=200, nights=2, trains=1, cars=1, regions=3)


def _decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def _gray(data: bytes) -> np.ndarray:
    return np.asarray(_decode(data).convert("RGB"), np.float64) @ np.array([0.299, 0.587, 0.114])


def _ncc(a: np.ndarray, b: np.ndarray, keep: np.ndarray) -> float:
    a, b = a[keep] - a[keep].mean(), b[keep] - b[keep].mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _store_files(root) -> dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith((".jpg", ".png")):
                path = os.path.join(dirpath, name)
                with open(path, "rb") as fh:
                    out[os.path.relpath(path, root)] = fh.read()
    return out


@pytest.fixture(scope="module")
def depot(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    store = Store(str(root))
    spec = DemoSpec(**TINY, anomaly_rate=0.5, seed=1)
    return store, spec, generate_depot(store, spec), root


def test_summary_and_references(depot):
    store, spec, summary, _ = depot
    assert summary.depot == "demo"
    assert summary.nights == ["2026-11-16", "2026-11-17"]
    assert summary.n_captures == 6 and summary.n_references == 3
    assert summary.n_anomalous == 3 == sum(summary.counts_by_type.values())
    assert set(summary.counts_by_type) == set(ANOMALY_TYPES)
    assert store.nights("demo") == summary.nights
    for train, car, region in itertools.product(train_ids(1), [1], region_ids(3)):
        im = _decode(store.read_bytes(Store.reference_rel(train, car, region)))
        assert im.format == "JPEG" and im.size == (320, 200)


def test_manifest_rows_match_files(depot):
    store, spec, summary, _ = depot
    ids = []
    for night in summary.nights:
        df = store.read_manifest("demo", night)
        assert list(df.columns) == MANIFEST_SCHEMA.names
        assert len(df) == 3
        assert (df["depot"] == "demo").all() and (df["night"] == night).all()
        assert df["captured_at"].is_monotonic_increasing and df["captured_at"].is_unique
        assert (df["captured_at"].dt.strftime("%Y-%m-%d") == night).all()
        for row in df.itertuples():
            assert row.uri == Store.capture_rel("demo", night, row.capture_id)
            assert row.capture_id == capture_id("demo", night, row.train_id, row.car, row.region_id)
            data = store.read_bytes(row.uri)
            assert hashlib.sha256(data).hexdigest() == row.sha256
            im = _decode(data)
            assert im.format == "JPEG" and im.mode == "RGB"
            assert im.size == (row.width, row.height) == (320, 200)
            ids.append(row.capture_id)
    assert len(ids) == len(set(ids)) == 6


def test_labels_and_masks(depot):
    store, spec, summary, _ = depot
    n_anom = 0
    for night in summary.nights:
        man = store.read_manifest("demo", night)
        lab = store.read_labels("demo", night)
        assert list(lab.columns) == LABELS_SCHEMA.names
        assert sorted(lab["capture_id"]) == sorted(man["capture_id"])
        for row in lab.itertuples():
            if row.anomalous:
                n_anom += 1
                assert row.anomaly_type in ANOMALY_TYPES
                assert row.mask_uri == Store.mask_rel("demo", night, row.capture_id)
                im = _decode(store.read_bytes(row.mask_uri))
                assert im.format == "PNG" and im.mode == "L" and im.size == (320, 200)
                m = np.asarray(im)
                assert set(np.unique(m)) <= {0, 255}
                assert (m > 0).sum() > 0
            else:
                assert pd.isna(row.anomaly_type) and pd.isna(row.mask_uri)
                assert not store.exists(Store.mask_rel("demo", night, row.capture_id))
    assert n_anom == summary.n_anomalous == 3


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_anomaly_rate_extremes(tmp_path, rate):
    store = Store(str(tmp_path))
    summary = generate_depot(store, DemoSpec(**TINY, anomaly_rate=rate, seed=3))
    flags = [f for night in summary.nights for f in store.read_labels("demo", night)["anomalous"]]
    assert len(flags) == 6 and all(f == bool(rate) for f in flags)
    assert summary.n_anomalous == (6 if rate else 0)
    if rate:  # 6 anomalies over 4 types: balanced, so every type is there
        assert all(summary.counts_by_type[t] >= 1 for t in ANOMALY_TYPES)
    else:
        assert not store.exists("labels/demo/2026-11-16/" + capture_id("demo", "2026-11-16", "T001", 1, "R01") + ".png")


def test_same_region_consistent_across_nights_without_viewpoint(tmp_path):
    store = Store(str(tmp_path))
    summary = generate_depot(store, DemoSpec(**TINY, anomaly_rate=0.5, seed=5, viewpoint=False))
    n1, n2 = summary.nights
    imgs, masks = {}, {}
    for night in (n1, n2):
        man = store.read_manifest("demo", night).set_index("region_id")
        lab = store.read_labels("demo", night).set_index("capture_id")
        for region, row in man.iterrows():
            imgs[night, region] = _gray(store.read_bytes(row.uri))
            uri = lab.loc[row.capture_id, "mask_uri"]
            m = np.asarray(_decode(store.read_bytes(uri))) > 0 if not pd.isna(uri) else np.zeros((200, 320), bool)
            masks[night, region] = ndi.binary_dilation(m, iterations=4)
    regions = region_ids(3)
    for region in regions:
        keep = ~(masks[n1, region] | masks[n2, region])
        assert _ncc(imgs[n1, region], imgs[n2, region], keep) > 0.8
    for ra, rb in itertools.combinations(regions, 2):
        keep = ~(masks[n1, ra] | masks[n2, rb])
        assert abs(_ncc(imgs[n1, ra], imgs[n2, rb], keep)) < 0.5


def test_deterministic_and_seed_dependent(tmp_path):
    spec = DemoSpec(**TINY, seed=7)
    roots = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    generate_depot(Store(str(roots[0])), spec)
    generate_depot(Store(str(roots[1])), spec, workers=2)  # regions rendered in two processes: the same bytes
    generate_depot(Store(str(roots[2])), DemoSpec(**TINY, seed=8))
    a, b, c = (_store_files(r) for r in roots)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    captures = [k for k in a if k.startswith("captures")]
    assert len(captures) == 6
    assert all(a[k] != c.get(k) for k in captures)


def test_masks_cover_the_change():
    """Same nuisance draws with and without the anomaly: strong changes lie in the (slightly dilated) mask."""
    scene = RegionScene(11, ("T001", 1, "R01"), 480, 300)
    for i, kind in enumerate(ANOMALY_TYPES):
        img, mask, drawn = scene.render(_rng(0, "n", i), anomaly=kind, anomaly_rng=_rng(0, "a", i))
        ref, none, nothing = scene.render(_rng(0, "n", i))
        assert drawn == kind and none is None and nothing is None
        assert mask.shape == img.shape[:2] == (300, 480) and mask.dtype == np.uint8
        diff = np.abs(img.astype(int) - ref.astype(int)).max(-1)
        m = mask > 0
        assert (diff[m] > 0).mean() > 0.4  # the mask marks pixels that changed
        strong = diff > 30
        assert strong.any() or kind == "scratch"
        if strong.any():
            assert (strong & ndi.binary_dilation(m, iterations=3)).sum() >= 0.9 * strong.sum()


def test_write_pair_folders(tmp_path):
    ids = write_pair_folders(str(tmp_path / "pairs"), 4, seed=2, width=160, height=100, anomaly_rate=0.5)
    assert ids == sorted(set(ids)) and len(ids) == 4
    n_anom = 0
    for pid in ids:
        folder = tmp_path / "pairs" / pid
        assert sorted(os.listdir(folder)) == ["cur.jpg", "his.jpg", "mask.png"]
        cur, his, mask = (Image.open(folder / n) for n in ("cur.jpg", "his.jpg", "mask.png"))
        assert cur.size == his.size == mask.size == (160, 100)
        assert cur.mode == his.mode == "RGB" and mask.mode == "L"
        m = np.asarray(mask)
        assert set(np.unique(m)) <= {0, 255}
        n_anom += bool(m.any())
    assert n_anom == 2
