"""Atomic nights: a rerun is invisible until its commit, a failure at any step leaves the previous night whole."""

import datetime as dt
import posixpath

import numpy as np
import pytest

from anodet_core.night.plan import write_reports
from anodet_core.store import publish
from anodet_core.store.layout import Store
from anodet_core.store.maps import MapWriter, create_night_maps, open_night_maps, read_map
from anodet_core.store.schemas import CaptureRow, FindingRow, Status

D, N = "d", "2026-11-30"
AT = dt.datetime(2026, 11, 30, 22, 0, tzinfo=dt.UTC)
IDS = ["c0", "c1", "c2"]


def _run(store: Store, value: int) -> str:
    """One run of the night: a new generation's maps filled with ``value``, rows that say so; returns its generation."""
    gen = publish.new_generation()
    create_night_maps(store, D, N, IDS, [(8, 6)] * 3, generation=gen)
    rel = store.maps_rel(D, N, gen)
    writer = MapWriter(store, D, N, rel)
    rows, finds = [], []
    for i, cid in enumerate(IDS):
        writer.write(i, np.full((6, 8), value, np.uint8))
        rows.append(CaptureRow(capture_id=cid, train_id="T", car=1, region_id="R", captured_at=AT, uri=f"x/{cid}.jpg",
                               status=Status.OK, score_max=value / 255, map_uri=rel, map_index=i, run_id=str(value)))
        finds.append(FindingRow(capture_id=cid, finding_id=0, train_id="T", car=1, region_id="R", x0=0, y0=0, x1=8, y1=6,
                                area_px=48, peak_score=value / 255, mean_score=value / 255, run_id=str(value)))
    return gen, rows, finds


def _published(store: Store, value: int) -> None:
    """What a reader sees is exactly the run that wrote ``value``: rows, findings, map group and every map."""
    caps = store.read_report("captures")
    finds = store.read_report("findings")
    assert sorted(caps.capture_id) == IDS and set(caps.run_id) == {str(value)}
    assert sorted(finds.capture_id) == IDS and set(finds.run_id) == {str(value)}
    for rel in caps.map_uri:
        assert np.asarray(open_night_maps(store, D, N, rel=rel)["maps"][:]).max() == value  # rows point at their maps
    for cid in IDS:
        assert (read_map(store, D, N, cid) == np.float32(value / 255)).all()


def test_a_rerun_replaces_the_night_in_one_step_and_cleans_up(tmp_path):
    store = Store(str(tmp_path))
    gen1, rows, finds = _run(store, 10)
    write_reports(store, D, N, rows, finds, generation=gen1, maps_rel=store.maps_rel(D, N, gen1))
    _published(store, 10)
    assert rows[0].map_uri == f"maps/{D}/{N}/{gen1}.zarr"  # store-relative
    gen2, rows2, finds2 = _run(store, 20)
    _published(store, 10)  # the second run's maps are written but nobody sees them yet
    write_reports(store, D, N, rows2, finds2)  # generation and map group: the night's newest
    _published(store, 20)
    commit = publish.read_commit(store, D, N)
    assert commit is not None and commit.generation == gen2 and commit.maps == store.maps_rel(D, N, gen2)
    # the first run is gone: one file per partition, one map group
    assert store.ls(store.maps_generations_rel(D, N)) == [f"{gen2}.zarr"]
    for table in ("captures", "findings"):
        assert store.ls(store.report_partition_rel(table, D, N)) == [f"part-{gen2}.parquet"]


@pytest.mark.fault("crash_during_publish")
@pytest.mark.parametrize("step", ["first_report_file", "second_report_file", "commit"])
def test_a_failure_at_any_step_of_a_rerun_leaves_the_previous_night(tmp_path, monkeypatch, step):
    store = Store(str(tmp_path))
    gen1, rows, finds = _run(store, 10)
    write_reports(store, D, N, rows, finds, generation=gen1)
    gen2, rows2, finds2 = _run(store, 20)
    calls = {"n": 0}
    real = publish._write_then_rename
    fail_at = {"first_report_file": 1, "second_report_file": 2, "commit": 3}[step]

    def dying(st, rel, write):
        calls["n"] += 1
        if calls["n"] == fail_at:
            folder, name = posixpath.split(rel)
            write(f"{folder}/.{name}.dead.tmp")  # the crash leaves its temporary file behind
            raise OSError("killed")
        real(st, rel, write)

    monkeypatch.setattr(publish, "_write_then_rename", dying)
    with pytest.raises(OSError, match="killed"):
        write_reports(store, D, N, rows2, finds2, generation=gen2)
    _published(store, 10)
    monkeypatch.setattr(publish, "_write_then_rename", real)
    write_reports(store, D, N, rows2, finds2, generation=gen2)  # the next run publishes and removes the debris
    _published(store, 20)
    for table in ("captures", "findings"):
        assert store.ls(store.report_partition_rel(table, D, N)) == [f"part-{gen2}.parquet"]


def test_nights_from_before_commits_are_read_then_replaced(tmp_path):
    store = Store(str(tmp_path))
    create_night_maps(store, D, N, IDS, [(8, 6)] * 3)  # legacy group maps/<depot>/<night>.zarr
    legacy = store.maps_rel(D, N)
    writer = MapWriter(store, D, N, legacy)
    for i in range(3):
        writer.write(i, np.full((6, 8), 5, np.uint8))
    rows = [CaptureRow(capture_id=c, train_id="T", car=1, region_id="R", captured_at=AT, uri="u", status=Status.OK,
                       map_uri=store.url(legacy), map_index=i, run_id="5") for i, c in enumerate(IDS)]
    for table, data in (("captures", rows), ("findings", [])):  # what older versions wrote: part-0.parquet
        from anodet_core.store.schemas import REPORT_SCHEMAS, table_from_rows

        store.write_table(f"{store.report_partition_rel(table, D, N)}/part-0.parquet", table_from_rows(data, REPORT_SCHEMAS[table]))
    assert publish.read_commit(store, D, N) is None
    assert sorted(store.read_report("captures").capture_id) == IDS
    assert (read_map(store, D, N, "c1") == np.float32(5 / 255)).all()
    gen, rows2, finds2 = _run(store, 20)
    write_reports(store, D, N, rows2, finds2, generation=gen)
    _published(store, 20)
    assert not store.exists(legacy) and not store.exists(f"{store.report_partition_rel('captures', D, N)}/part-0.parquet")


def test_writing_one_table_keeps_the_other_as_committed(tmp_path):
    store = Store(str(tmp_path))
    gen, rows, finds = _run(store, 10)
    write_reports(store, D, N, rows, finds, generation=gen)
    store.write_report("findings", D, N, finds[:1])
    assert len(store.read_report("findings")) == 1 and len(store.read_report("captures")) == 3
    assert publish.read_commit(store, D, N).maps == store.maps_rel(D, N, gen)  # the map group stays the committed one
