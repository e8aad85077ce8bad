"""Store layout, schema round trips and history resolution."""

import datetime as dt

import pandas as pd
import pytest

from anodet_core.night.history import resolve_histories
from anodet_core.store.layout import Store
from anodet_core.store.names import check_night
from anodet_core.store.schemas import CAPTURE_REPORT_SCHEMA, FINDING_REPORT_SCHEMA, LABELS_SCHEMA, MANIFEST_SCHEMA

UTC = dt.UTC


def _cap(cid, night, region="R01", train="T001", car=1, hour=1):
    d = dt.date.fromisoformat(night)
    return dict(capture_id=cid, depot="d1", night=night, train_id=train, car=car, region_id=region,
                captured_at=dt.datetime(d.year, d.month, d.day, hour, tzinfo=UTC), uri=f"captures/d1/{night}/{cid}.jpg",
                sha256="0" * 64, width=64, height=48)


def test_manifest_and_labels_round_trip(tmp_path):
    store = Store(str(tmp_path))
    rows = [_cap("a", "2026-01-02"), _cap("b", "2026-01-02", region="R02")]
    store.write_manifest("d1", "2026-01-02", rows)
    back = store.read_manifest("d1", "2026-01-02")
    assert list(back.columns) == MANIFEST_SCHEMA.names
    assert back["capture_id"].tolist() == ["a", "b"]
    assert back["captured_at"].iloc[0] == pd.Timestamp("2026-01-02T01:00Z")
    assert back["car"].dtype == "int32"
    store.write_labels("d1", "2026-01-02", [dict(capture_id="a", anomalous=True, anomaly_type="scratch", mask_uri="m.png")])
    lab = store.read_labels("d1", "2026-01-02")
    assert list(lab.columns) == LABELS_SCHEMA.names and bool(lab["anomalous"].iloc[0])
    assert store.nights("d1") == ["2026-01-02"] and store.depots() == ["d1"]


def test_report_partitions_round_trip_and_overwrite(tmp_path):
    store = Store(str(tmp_path))
    row = dict(capture_id="a", train_id="T", car=2, region_id="R", status="ok", decision="normal", score_max=0.25,
               n_findings=0, captured_at=dt.datetime(2026, 1, 2, tzinfo=UTC))
    store.write_report("captures", "d1", "2026-01-02", [row])
    store.write_report("captures", "d1", "2026-01-03", [{**row, "capture_id": "b"}])
    store.write_report("captures", "d1", "2026-01-03", [{**row, "capture_id": "c"}])  # re-run replaces
    df = store.read_report("captures").sort_values("capture_id")
    assert df["capture_id"].tolist() == ["a", "c"]
    assert df["night"].tolist() == ["2026-01-02", "2026-01-03"] and set(df["depot"]) == {"d1"}
    assert df["score_max"].iloc[0] == pytest.approx(0.25)
    assert set(CAPTURE_REPORT_SCHEMA.names) <= set(df.columns)
    # partition columns live in the path, not in the files
    (f,) = [p for p in store.report_files("captures") if "night=2026-01-02" in p]
    import pyarrow.parquet as pq

    assert "depot" not in pq.read_schema(store.fs.open(f)).names
    store.write_report("findings", "d1", "2026-01-02", [])
    assert store.read_report("findings").empty and set(FINDING_REPORT_SCHEMA.names) <= set(store.read_report("findings").columns)


def test_bad_names_and_rows_are_refused(tmp_path):
    store = Store(str(tmp_path))
    with pytest.raises(ValueError):
        store.capture_rel("../etc", "2026-01-01", "x")
    with pytest.raises(ValueError):
        check_night("2026-13-01")
    with pytest.raises(ValueError, match="unknown columns"):
        store.write_report("captures", "d1", "2026-01-01", [{"capture_id": "a", "bogus": 1}])
    with pytest.raises(FileNotFoundError):
        store.read_manifest("d1", "2026-01-01")


def test_history_prefers_latest_earlier_normal_capture_then_reference(tmp_path):
    store = Store(str(tmp_path))
    n1, n2, n3 = "2026-01-01", "2026-01-02", "2026-01-03"

    def report(night, cid, region, decision, status="ok", train="T001"):
        d = dt.date.fromisoformat(night)
        return dict(capture_id=cid, train_id=train, car=1, region_id=region, status=status, decision=decision,
                    captured_at=dt.datetime(d.year, d.month, d.day, 1, tzinfo=UTC), uri=f"captures/d1/{night}/{cid}.jpg")

    store.write_report("captures", "d1", n1, [report(n1, "r1-n1", "R01", "normal"), report(n1, "r2-n1", "R02", "normal")])
    store.write_report("captures", "d1", n2, [
        report(n2, "r1-n2", "R01", "anomalous"),  # not normal: must not become a history
        report(n2, "r2-n2", "R02", "normal", status="registration_failed"),  # not trustworthy either
    ])
    # a later night must never be used (backfill of n3 while n4 exists is covered by the strict time order)
    store.write_report("captures", "d1", "2026-01-05", [report("2026-01-05", "r1-n5", "R01", "normal")])
    store.write_bytes(store.reference_rel("T001", 1, "R03"), b"ref")
    manifest = pd.DataFrame([_cap("r1-n3", n3), _cap("r2-n3", n3, region="R02"), _cap("r3-n3", n3, region="R03"),
                             _cap("r4-n3", n3, region="R04")])
    jobs = resolve_histories(store, manifest, "d1", n3)
    by = {j.capture["capture_id"]: j for j in jobs}
    assert [j.index for j in jobs] == [0, 1, 2, 3]
    assert (by["r1-n3"].history_source, by["r1-n3"].history_capture_id) == ("capture", "r1-n1")
    assert by["r1-n3"].history_uri == f"captures/d1/{n1}/r1-n1.jpg"
    assert by["r2-n3"].history_capture_id == "r2-n1"
    assert (by["r3-n3"].history_source, by["r3-n3"].history_uri) == ("reference", "references/T001/1/R03.jpg")
    assert by["r4-n3"].history_source is None and by["r4-n3"].history_uri is None


def test_history_ignores_reports_of_the_night_being_rerun(tmp_path):
    store = Store(str(tmp_path))
    n = "2026-01-02"
    d = dt.datetime(2026, 1, 2, 0, 30, tzinfo=UTC)
    store.write_report("captures", "d1", n, [dict(capture_id="early", train_id="T001", car=1, region_id="R01",
                                                 status="ok", decision="normal", captured_at=d, uri="x.jpg")])
    jobs = resolve_histories(store, pd.DataFrame([_cap("late", n)]), "d1", n)
    assert jobs[0].history_source is None


def test_a_label_overrides_the_decision_for_history(tmp_path):
    """A confirmed false alarm is a valid history; a confirmed anomaly the model called normal is not (the next
    night's repaired part would look like a change against it)."""
    store = Store(str(tmp_path))
    n1, n2, n3 = "2026-01-01", "2026-01-02", "2026-01-03"

    def report(night, cid, region, decision, hour=1):
        d = dt.date.fromisoformat(night)
        return dict(capture_id=cid, train_id="T001", car=1, region_id=region, status="ok", decision=decision,
                    captured_at=dt.datetime(d.year, d.month, d.day, hour, tzinfo=UTC), uri=f"captures/d1/{night}/{cid}.jpg")

    store.write_report("captures", "d1", n1, [report(n1, "a-n1", "R01", "normal"), report(n1, "b-n1", "R02", "normal"),
                                              report(n1, "c-n1", "R03", "normal")])
    store.write_report("captures", "d1", n2, [
        report(n2, "a-n2", "R01", "normal"),  # missed: labelled anomalous below
        report(n2, "b-n2", "R02", "anomalous"),  # false alarm: labelled normal below
        report(n2, "c-n2", "R03", "normal"),  # unlabelled: the decision stands
    ])
    store.write_labels("d1", n2, [dict(capture_id="a-n2", anomalous=True, anomaly_type="scratch", mask_uri=None),
                                  dict(capture_id="b-n2", anomalous=False, anomaly_type=None, mask_uri=None)])
    manifest = pd.DataFrame([_cap("a-n3", n3), _cap("b-n3", n3, region="R02"), _cap("c-n3", n3, region="R03")])
    by = {j.capture["capture_id"]: j.history_capture_id for j in resolve_histories(store, manifest, "d1", n3)}
    assert by == {"a-n3": "a-n1", "b-n3": "b-n2", "c-n3": "c-n2"}
    labels = store.all_labels()
    assert sorted(labels["capture_id"]) == ["a-n2", "b-n2"] and set(labels["night"]) == {n2} and set(labels["depot"]) == {"d1"}
    assert store.all_labels().columns.tolist() == Store(str(tmp_path / "empty")).all_labels().columns.tolist()
