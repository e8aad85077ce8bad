"""Verdicts: append-only records that overlay labels, reach retraining's pairs and decide history."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from anodet_core.imaging.io import encode_png, read_mask
from anodet_core.night.history import resolve_histories
from anodet_core.store.layout import Store
from anodet_core.store.verdicts import record_verdict
from anodet_core.training.data import store_pairs
from flows.cli import main
from tests.helpers import add_capture

UTC = dt.UTC
N1, N2, N3 = "2026-03-01", "2026-03-02", "2026-03-03"


def _report_row(row: dict, decision: str) -> dict:
    keep = ("capture_id", "train_id", "car", "region_id", "captured_at", "uri")
    return {**{k: row[k] for k in keep}, "status": "ok", "decision": decision}


def _depot(tmp_path) -> tuple[Store, dict]:
    """Two regions over two scored nights (no labels table at all) and a third night to resolve histories for."""
    store = Store(str(tmp_path / "store"))
    rng = np.random.default_rng(0)
    rows: dict[str, dict] = {}
    for night, decisions in ((N1, {"R01": "normal", "R02": "normal"}), (N2, {"R01": "anomalous", "R02": "normal"})):
        manifest, report = [], []
        for i, (region, decision) in enumerate(decisions.items()):
            cid = f"{region}-{night}"
            row, _ = add_capture(store, "d1", night, cid, np.full((96, 128, 3), 90, np.uint8), False, rng,
                                 train_id="T001", region_id=region, minute=i)
            manifest.append(row), report.append(_report_row(row, decision))
            rows[cid] = row
        store.write_manifest("d1", night, manifest)
        store.write_report("captures", "d1", night, report)
    manifest = []
    for i, region in enumerate(("R01", "R02")):
        row, _ = add_capture(store, "d1", N3, f"{region}-{N3}", np.full((96, 128, 3), 90, np.uint8), False, rng,
                             train_id="T001", region_id=region, minute=i)
        manifest.append(row)
    store.write_manifest("d1", N3, manifest)
    return store, rows


def _histories(store: Store) -> dict[str, str | None]:
    jobs = resolve_histories(store, store.read_manifest("d1", N3), "d1", N3)
    return {j.capture["region_id"]: j.history_capture_id for j in jobs}


def _mask(w=128, h=96) -> bytes:
    m = np.zeros((h, w), np.uint8)
    m[10:30, 20:50] = 200  # not pure white: stored re-encoded as 0/255
    return encode_png(m)


def test_verdict_round_trip_reaches_retraining_and_history(tmp_path):
    store, _ = _depot(tmp_path)
    # before any verdict: decisions decide history, and there is nothing to train on
    assert _histories(store) == {"R01": "R01-2026-03-01", "R02": "R02-2026-03-02"}
    assert store_pairs(store, "d1", [N1, N2]) == []

    # the false alarm on R01 is confirmed normal; the capture R02 the model called normal is confirmed anomalous
    a = record_verdict(store, "R01-2026-03-02", "normal", by="ana", note="shadow of the jack")
    b = record_verdict(store, "R02-2026-03-02", "anomaly", by="ana", mask=_mask(), anomaly_type="oil_leak")
    assert (a.depot, a.night) == ("d1", N2) and b.row.mask_uri.startswith(f"labels/d1/{N2}/verdicts/")
    assert set(np.unique(np.asarray(read_mask(store.read_bytes(b.row.mask_uri))))) == {False, True}

    assert _histories(store) == {"R01": "R01-2026-03-02", "R02": "R02-2026-03-01"}
    # retraining pairs a labelled capture with the latest earlier capture *labelled* normal: ground truth for night 1
    store.write_labels("d1", N1, [dict(capture_id=f"{r}-{N1}", anomalous=False) for r in ("R01", "R02")])
    labels = store.read_labels("d1", N2).set_index("capture_id")
    assert labels.loc["R02-2026-03-02", "anomalous"] and not labels.loc["R01-2026-03-02", "anomalous"]
    pairs = {p.key: p for p in store_pairs(store, "d1", [N1, N2])}
    assert set(pairs) == {"R01-2026-03-02", "R02-2026-03-02"}  # night 1's captures have no history: not pairs
    assert pairs["R01-2026-03-02"].mask_uri is None  # normal: an all-zero target
    assert pairs["R02-2026-03-02"].mask_uri == b.row.mask_uri
    assert pairs["R02-2026-03-02"].his_uri == store.capture_rel("d1", N1, "R02-2026-03-01")


def test_a_later_verdict_supersedes_and_nothing_is_overwritten(tmp_path):
    store, _ = _depot(tmp_path)
    t0 = dt.datetime(2026, 3, 3, 7, 0, tzinfo=UTC)
    record_verdict(store, "R01-2026-03-02", "normal", by="ana", at=t0)
    record_verdict(store, "R01-2026-03-02", "anomaly", by="ben", mask=_mask(), at=t0 + dt.timedelta(minutes=5))
    verdicts = store.read_verdicts("d1", N2)
    assert verdicts["verdict_by"].tolist() == ["ana", "ben"]
    assert len(store.ls(store.verdicts_rel("d1", N2))) == 3  # two verdicts and one mask
    assert bool(store.read_labels("d1", N2).set_index("capture_id").loc["R01-2026-03-02", "anomalous"])
    assert _histories(store)["R01"] == "R01-2026-03-01"
    # a verdict over ground truth: the labels table stays as written, the overlay wins
    store.write_labels("d1", N2, [dict(capture_id="R02-2026-03-02", anomalous=True, anomaly_type="scratch", mask_uri=None)])
    record_verdict(store, "R02-2026-03-02", "normal", by="ben", at=t0 + dt.timedelta(minutes=9))
    assert store.read_table(store.labels_rel("d1", N2))["anomalous"].to_pylist() == [True]
    all_labels = store.all_labels().set_index("capture_id")
    assert not all_labels.loc["R02-2026-03-02", "anomalous"] and len(all_labels) == 2


def test_an_anomaly_without_a_mask_is_not_trained_as_normal(tmp_path):
    store, _ = _depot(tmp_path)
    store.write_labels("d1", N1, [dict(capture_id=f"{r}-{N1}", anomalous=False) for r in ("R01", "R02")])
    assert len(store_pairs(store, "d1", [N1, N2])) == 0  # night 2 unlabelled
    record_verdict(store, "R01-2026-03-02", "normal", by="ana")
    assert [p.key for p in store_pairs(store, "d1", [N1, N2])] == ["R01-2026-03-02"]
    record_verdict(store, "R02-2026-03-02", "anomaly", by="ana")
    assert [p.key for p in store_pairs(store, "d1", [N1, N2])] == ["R01-2026-03-02"]
    assert _histories(store)["R02"] == "R02-2026-03-01"


@pytest.mark.parametrize("kwargs, message", [
    (dict(capture_id="nope"), "in no night's report"),
    (dict(capture_id="../x"), "invalid capture_id"),
    (dict(verdict="maybe"), "is not a valid Verdict"),
    (dict(by=" "), "who gave it"),
    (dict(verdict="normal", mask=_mask()), "takes no mask"),
    (dict(anomaly_type="rust"), "unknown anomaly type"),
    (dict(mask=b"not an image"), "not a readable image"),
    (dict(mask=_mask(64, 48)), "the capture is 128x96"),
    (dict(mask=encode_png(np.zeros((96, 128), np.uint8))), "marks no pixel"),
    (dict(depot="d1", night=N1), "not in the manifest"),
])
def test_bad_verdicts_are_refused_and_write_nothing(tmp_path, kwargs, message):
    store, _ = _depot(tmp_path)
    args = dict(capture_id="R01-2026-03-02", verdict="anomaly", by="ana") | kwargs
    with pytest.raises((ValueError, LookupError), match=message):
        record_verdict(store, args.pop("capture_id"), args.pop("verdict"), **args)
    assert store.read_verdicts().empty and not store.exists("labels")


def test_label_cli_records_and_reports_errors(tmp_path, capsys):
    store, _ = _depot(tmp_path)
    mask = tmp_path / "m.png"
    mask.write_bytes(_mask())
    assert main(["label", "--store", store.root, "--capture", "R01-2026-03-02", "--verdict", "anomaly", "--mask", str(mask),
                 "--type", "foreign_body", "--note", "bolt on the rail", "--by", "carla"]) == 0
    assert "verdict anomaly on R01-2026-03-02 (depot d1, night 2026-03-02) by carla" in capsys.readouterr().out
    v = store.read_verdicts()
    assert v[["capture_id", "verdict", "anomaly_type", "note", "verdict_by", "depot", "night"]].iloc[0].tolist() == [
        "R01-2026-03-02", "anomaly", "foreign_body", "bolt on the rail", "carla", "d1", N2]
    assert pd.Timestamp(v["verdict_at"].iloc[0]).tzinfo is not None
    assert main(["label", "--store", store.root, "--capture", "R09", "--verdict", "normal"]) == 2
    assert "error: capture 'R09' is in no night's report" in capsys.readouterr().err
