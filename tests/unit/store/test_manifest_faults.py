"""Manifest faults through the night: plan_night, process_batch per batch, write_reports and the summary.

Every night has two good captures, c0 (a white square: anomalous, history its pinned reference) and c1 (normal,
history an earlier night's normal capture, so the report join runs), plus one more row, ``bad``, carrying the
fault. A row-level fault must give ``bad`` one report row with status ``invalid_manifest`` and a message naming
the field and the problem, keep its map slot unwritten, and leave c0 and c1 planned and scored as in a night
without it; a structural fault must stop the night before anything is written, naming the manifest file and
the column. The model is a deterministic difference of cur and his. Cases are marked for the fault catalogue.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
import zarr
from PIL import Image

from anodet_core.config import Settings
from anodet_core.imaging.io import sha256
from anodet_core.night import batch
from anodet_core.night.plan import NightPlan, plan_night, split_jobs, summarize, write_reports
from anodet_core.registry import model_store
from anodet_core.registry.model_store import ModelCard
from anodet_core.store.layout import Store
from anodet_core.store.manifest import ManifestError
from anodet_core.store.schemas import MANIFEST_SCHEMA, NOT_SCORED, row_dict
from anodet_core.text import printable

from helpers import jpeg

DEPOT, NIGHT0, NIGHT = "mfaults", "2026-08-01", "2026-08-02"
W, H = 320, 240  # smaller scenes have too little texture for the registration
MIN_AREA = 40  # native px
SQUARE = (90, 60, 30)  # c0's white square: x, y, side
BAD = 2  # bad's manifest row (and map slot)
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")  # newlines separate the summary's lines
NAME_RULE = "use letters, digits, '_', '-', '.'"


class DiffMap(torch.nn.Module):
    """A deterministic "model": 1 where cur and his differ by more than ~45 grey levels (channel mean)."""

    def forward(self, cur: torch.Tensor, his: torch.Tensor) -> torch.Tensor:
        d = (cur - his).abs().mean(1, keepdim=True)  # inputs in [-1, 1]
        return ((d - 0.2) * 4).clamp(0, 1)


@functools.cache
def _scenes() -> list[tuple[np.ndarray, np.ndarray]]:
    """Per region: (history pixels, cur pixels), smooth colour scenes, cur = his + a little noise (R0: + square)."""
    rng = np.random.default_rng(7)  # scenes the registration aligns (some seeds' c0 fails it)
    out = []
    for i in range(3):
        small = rng.integers(40, 200, (12, 16, 3), dtype=np.uint8)
        his = np.asarray(Image.fromarray(small).resize((W, H), Image.Resampling.BICUBIC))
        cur = np.clip(his.astype(int) + rng.integers(-3, 4, his.shape), 0, 255).astype(np.uint8)
        if i == 0:
            x, y, s = SQUARE
            cur[y : y + s, x : x + s] = 250
        out.append((his, cur))
    return out


def _rows(store: Store) -> list[dict[str, Any]]:
    """Write the night's files (c0 and bad: references; c1: an earlier night's normal capture) and return its three
    valid manifest rows c0, c1, bad."""
    rows = []
    for i, cid in enumerate(["c0", "c1", "bad"]):
        his, cur = _scenes()[i]
        if cid == "c1":
            old = store.capture_rel(DEPOT, NIGHT0, "c1-old")
            store.write_bytes(old, jpeg(his))
            store.write_report("captures", DEPOT, NIGHT0, [dict(
                capture_id="c1-old", train_id="T1", car=1, region_id="R1", status="ok", decision="normal", uri=old,
                captured_at=dt.datetime(2026, 8, 1, 1, tzinfo=dt.UTC))])
        else:
            store.write_bytes(store.reference_rel("T1", 1, f"R{i}"), jpeg(his))
        data = jpeg(cur)
        uri = store.capture_rel(DEPOT, NIGHT, cid)
        store.write_bytes(uri, data)
        rows.append(dict(capture_id=cid, depot=DEPOT, night=NIGHT, train_id="T1", car=1, region_id=f"R{i}",
                         captured_at=dt.datetime(2026, 8, 2, 1, i, tzinfo=dt.UTC), uri=uri, sha256=sha256(data),
                         width=W, height=H))
    return rows


def _table(rows: list[dict[str, Any]], **columns: pa.Array | None) -> pa.Table:
    """The manifest of ``rows`` as a table, with ``columns`` replacing (an array) or dropping (None) columns."""
    out = {}
    for f in MANIFEST_SCHEMA:
        col = columns.get(f.name, pa.array([r[f.name] for r in rows], f.type))
        if col is not None:
            out[f.name] = col
    return pa.table(out)


@dataclass
class Night:
    """What a night gave: its plan, capture rows by map slot, findings by capture, the summary, the map group."""

    plan: NightPlan
    rows: dict[int, dict[str, Any]]
    findings: dict[str, list]
    markdown: str
    maps: Any


def _model(store: Store, monkeypatch) -> None:
    card = model_store.save_version(store, DiffMap(), ModelCard(name="diffmap", arch="diffmap", threshold=0.5,
                                                                min_finding_area=MIN_AREA))
    model_store.set_alias(store, "diffmap", card.version)
    monkeypatch.setattr(batch, "load", lambda st, ref, device="cpu": (DiffMap(), model_store.resolve_card(st, ref)))
    monkeypatch.setattr(batch, "_MODELS", {})


def _run(store: Store, monkeypatch, manifest: pa.Table | list[dict[str, Any]], allowed: tuple[str, ...] = ()) -> Night:
    """Plan the night, score it in batches of 2 captures (bad alone in the second), write its reports, summarise."""
    if isinstance(manifest, pa.Table):
        store.write_table(store.manifest_rel(DEPOT, NIGHT), manifest)
    else:
        store.write_manifest(DEPOT, NIGHT, manifest)
    _model(store, monkeypatch)
    plan = plan_night(store, DEPOT, NIGHT, "diffmap", allowed_uri_prefixes=allowed)
    settings = Settings(store=store.root, model="diffmap", batch_size=2, task_pairs=2, prep_processes=0, fast=False,
                        single_image="", threshold=plan.threshold, min_finding_area=plan.min_finding_area)
    captures, findings = [], []
    for jobs in split_jobs(plan.jobs, settings.task_pairs):
        res = batch.process_batch(store, DEPOT, NIGHT, jobs, plan.model_ref, settings, "run", plan.single_models)
        captures += res.captures
        findings += res.findings
    reports = write_reports(store, DEPOT, NIGHT, captures, findings)
    rows = {r.map_index: row_dict(r) for r in captures}
    assert len(captures) == len(plan.jobs) and sorted(rows) == list(range(len(plan.jobs)))  # one row each, none lost
    by_capture: dict[str, list] = {}
    for f in sorted(findings, key=lambda f: f.finding_id):
        by_capture.setdefault(f.capture_id, []).append(f)
    md = summarize(store, plan, captures, 1.0, reports).markdown()
    assert not CONTROL.search(md)
    return Night(plan, rows, by_capture, md, zarr.open_group(plan.maps_url, mode="r"))


def _others_scored(night: Night) -> None:
    """c0 and c1 are planned and scored as in a night without the bad row (c1 against the earlier capture)."""
    for index, (cid, decision) in enumerate((("c0", "anomalous"), ("c1", "normal"))):
        row = night.rows[index]
        assert (row["capture_id"], row["status"], row["decision"], row["error"]) == (cid, "ok", decision, None), row
        assert night.maps["written"][index] == 1 and night.maps["capture_ids"][index] == cid
    assert night.rows[1]["history_capture_id"] == "c1-old"
    (top,) = night.findings["c0"]
    x, y, s = SQUARE
    assert top.x0 <= x + s // 2 < top.x1 and top.y0 <= y + s // 2 < top.y1
    assert "c1" not in night.findings


def _invalid(store: Store, night: Night, message: str, index: int = BAD) -> None:
    """Row ``index`` is reported invalid_manifest with exactly ``message``, never scored, its map slot empty and
    unwritten; the others are intact; the published report says the same."""
    row = night.rows[index]
    assert (row["status"], row["error"]) == ("invalid_manifest", message)
    assert row["decision"] is None and row["score_max"] is None and row["history_uri"] is None
    assert row["model_name"] == "diffmap" and row["run_id"] == "run"
    assert night.maps["written"][index] == 0 and night.maps["widths"][index] == 0 and night.maps["capture_ids"][index] == ""
    report = store.read_report("captures")
    report = report[report["night"] == NIGHT].set_index("map_index")
    assert report.loc[index, "status"] == "invalid_manifest" and report.loc[index, "error"] == message
    assert len(report) == len(night.rows)
    _others_scored(night)


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(str(tmp_path / "store"))


# ------------------------------------------------------------------------------------------ row-level faults


@pytest.mark.parametrize("field, value, message", [
    pytest.param("uri", None, "uri is null", marks=pytest.mark.fault("null_uri")),
    pytest.param("capture_id", None, "capture_id is null", marks=pytest.mark.fault("null_capture_id")),
    pytest.param("train_id", None, "train_id is null", marks=pytest.mark.fault("null_train_id")),
    pytest.param("region_id", None, "region_id is null", marks=pytest.mark.fault("null_region_id")),
    pytest.param("car", None, "car is null", marks=pytest.mark.fault("null_car")),
    pytest.param("captured_at", None, "captured_at is null", marks=pytest.mark.fault("null_captured_at")),
    pytest.param("width", None, "width is null", marks=pytest.mark.fault("null_size")),
    pytest.param("car", 0, "car 0 is not positive", marks=pytest.mark.fault("non_positive_car")),
    pytest.param("height", -4, "height -4 is not positive", marks=pytest.mark.fault("non_positive_size")),
    pytest.param("capture_id", "c1", "capture_id 'c1' repeats manifest row 1", marks=pytest.mark.fault("duplicate_capture_id")),
    pytest.param("uri", "/etc/passwd", "uri '/etc/passwd' is absolute: outside the store",
                 marks=pytest.mark.fault("absolute_uri")),
    pytest.param("uri", "captures/../../outside/bad.jpg", "uri 'captures/../../outside/bad.jpg' climbs out of its folder ('..')",
                 marks=pytest.mark.fault("dotdot_uri")),
    pytest.param("uri", "s3://elsewhere/bad.jpg",
                 "uri 's3://elsewhere/bad.jpg' is a URL: outside the store (see ANODET_ALLOWED_URI_PREFIXES)",
                 marks=pytest.mark.fault("url_uri")),
    pytest.param("uri", "captures\\bad.jpg", "uri 'captures\\\\bad.jpg' holds a backslash",
                 marks=pytest.mark.fault("backslash_uri")),
    pytest.param("uri", "captures/bad\x00.jpg", "uri 'captures/bad\\x00.jpg' holds a control character",
                 marks=pytest.mark.fault("nul_uri")),
])
def test_a_bad_value_costs_its_row_only(store, monkeypatch, field, value, message):
    rows = _rows(store)
    rows[BAD][field] = value
    _invalid(store, _run(store, monkeypatch, rows), message)


@pytest.mark.fault("hostile_id")
@pytest.mark.parametrize("field, value", [
    ("capture_id", "bad\x00"), ("capture_id", "bad\nINFO forged line"), ("capture_id", "\x1b[31mbad\x1b[0m"),
    ("capture_id", "../x"), ("capture_id", "a|b"), ("capture_id", "bad\u2028"), ("train_id", "T\n1"),
    ("region_id", "R\x1b[2J"), ("region_id", ".."),
])
def test_a_hostile_id_costs_its_row_only_and_reaches_no_output_raw(store, monkeypatch, caplog, field, value):
    rows = _rows(store)
    rows[BAD][field] = value
    night = _run(store, monkeypatch, rows)
    _invalid(store, night, f"invalid {field} {value!r}: {NAME_RULE}")
    assert printable(value).replace("|", "\\|") in night.markdown  # escaped, not dropped
    assert not CONTROL.search(caplog.text.replace("\n", ""))  # the plan's warning about the row


@pytest.mark.fault("several_faults_in_a_row")
def test_every_problem_of_a_row_is_named(store, monkeypatch):
    rows = _rows(store)
    rows[BAD].update(capture_id=None, car=-1, uri="/x.jpg")
    _invalid(store, _run(store, monkeypatch, rows), "capture_id is null; car -1 is not positive; uri '/x.jpg' is absolute: "
                                                    "outside the store")


@pytest.mark.fault("wrong_type_car")
@pytest.mark.parametrize("cars, message", [
    (pa.array(["1", "1", "three"]), "car 'three' cannot be read as int32"),
    (pa.array([1.0, 1.0, 1.5]), "car 1.5 cannot be read as int32"),
    (pa.array([1, 1, 2**40]), "car 1099511627776 cannot be read as int32"),
])
def test_a_value_of_the_wrong_type_costs_its_row_only(store, monkeypatch, cars, message):
    """Values that cast (the strings "1", the float 1.0) are read; the one that does not invalidates its row."""
    _invalid(store, _run(store, monkeypatch, _table(_rows(store), car=cars)), message)


@pytest.mark.fault("wrong_type_captured_at")
def test_a_timestamp_that_does_not_parse_costs_its_row_only(store, monkeypatch):
    times = pa.array(["2026-08-02T01:00:00Z", "2026-08-02T01:01:00Z", "yesterday"])
    night = _run(store, monkeypatch, _table(_rows(store), captured_at=times))
    _invalid(store, night, "captured_at 'yesterday' cannot be read as timestamp[us, tz=UTC]")


@pytest.mark.fault("all_rows_invalid")
def test_a_night_of_invalid_rows_still_reports_every_row(store, monkeypatch):
    rows = _rows(store)
    for r in rows:
        r["uri"] = None
    store.write_manifest(DEPOT, NIGHT, rows)
    _model(store, monkeypatch)
    plan = plan_night(store, DEPOT, NIGHT, "diffmap")
    settings = Settings(store=store.root, model="diffmap", prep_processes=0, fast=False, single_image="",
                        threshold=plan.threshold, min_finding_area=plan.min_finding_area)
    res = batch.process_batch(store, DEPOT, NIGHT, plan.jobs, plan.model_ref, settings, "run")
    assert [(r.map_index, r.status, r.error) for r in res.captures] == [(i, "invalid_manifest", "uri is null") for i in range(3)]
    maps = zarr.open_group(plan.maps_url, mode="r")
    assert maps["maps"].shape[0] == 3 and not np.asarray(maps["written"][:]).any()


# ------------------------------------------------------------------------------------------ uris outside the store


def _outside_capture(tmp_path) -> tuple[str, bytes]:
    """bad's cur as a JPEG in a folder outside the store: (its folder, its bytes)."""
    folder = tmp_path / "outside"
    folder.mkdir(exist_ok=True)
    data = jpeg(_scenes()[BAD][1])
    (folder / "bad.jpg").write_bytes(data)
    return str(folder), data


@pytest.mark.fault("url_uri")
def test_a_url_under_an_allowed_prefix_is_scored(store, monkeypatch, tmp_path):
    folder, data = _outside_capture(tmp_path)
    rows = _rows(store)
    rows[BAD].update(uri=f"file://{folder}/bad.jpg", sha256=sha256(data))
    night = _run(store, monkeypatch, rows, allowed=(f"file://{folder}",))
    assert (night.rows[BAD]["status"], night.rows[BAD]["decision"]) == ("ok", "normal")
    _others_scored(night)
    denied = _run(store, monkeypatch, rows, allowed=(f"file://{folder}-other",))  # the prefix matches at a '/'
    _invalid(store, denied, f"uri 'file://{folder}/bad.jpg' is a URL: outside the store (see ANODET_ALLOWED_URI_PREFIXES)")


def _refused_read(night: Night) -> None:
    bad = night.rows[BAD]
    assert bad["status"] in NOT_SCORED and bad["decision"] is None and "leaves the store" in bad["error"], bad
    assert night.maps["written"][BAD] == 0
    _others_scored(night)


@pytest.mark.fault("symlink_out_of_store")
def test_a_capture_that_links_out_of_the_store_is_not_read(store, monkeypatch, tmp_path):
    folder, data = _outside_capture(tmp_path)
    rows = _rows(store)
    path = store.path(rows[BAD]["uri"])
    os.remove(path)
    os.symlink(os.path.join(folder, "bad.jpg"), path)
    rows[BAD]["sha256"] = sha256(data)  # were it read, it would be scored
    _refused_read(_run(store, monkeypatch, rows))


@pytest.mark.fault("symlink_out_of_store")
def test_a_reference_that_links_out_of_the_store_is_not_read(store, monkeypatch, tmp_path):
    folder, _ = _outside_capture(tmp_path)
    rows = _rows(store)
    ref = store.path(store.reference_rel("T1", 1, "R2"))
    os.remove(ref)
    os.symlink(os.path.join(folder, "bad.jpg"), ref)
    _refused_read(_run(store, monkeypatch, rows))


# ------------------------------------------------------------------------------------------ structural faults


def _stops(store: Store, monkeypatch, manifest: pa.Table | bytes, message: str) -> None:
    """Planning raises ManifestError with ``message`` (after "manifest <its URL>") and leaves no map group."""
    rel = store.manifest_rel(DEPOT, NIGHT)
    if isinstance(manifest, bytes):
        store.write_bytes(rel, manifest)
    else:
        store.write_table(rel, manifest)
    _model(store, monkeypatch)
    with pytest.raises(ManifestError) as err:
        plan_night(store, DEPOT, NIGHT, "diffmap")
    assert str(err.value).startswith(f"manifest {store.url(rel)}") and rel in str(err.value)
    assert str(err.value)[len(f"manifest {store.url(rel)}"):] == message
    assert not store.exists(f"maps/{DEPOT}")


@pytest.mark.fault("missing_column")
@pytest.mark.parametrize("column", ["sha256", "uri", "car"])
def test_a_missing_column_stops_the_night_naming_file_and_column(store, monkeypatch, column):
    _stops(store, monkeypatch, _table(_rows(store), **{column: None}), f": column {column!r} is missing")


@pytest.mark.fault("uncastable_column")
def test_a_column_of_a_type_that_cannot_be_cast_stops_the_night(store, monkeypatch):
    _stops(store, monkeypatch, _table(_rows(store), captured_at=pa.array([True, False, True])),
           ": column 'captured_at' is bool, which cannot be read as timestamp[us, tz=UTC]")
    _stops(store, monkeypatch, _table(_rows(store), car=pa.array([[1], [1], [2]])),
           ": column 'car' is list<element: int64>, which cannot be read as int32")  # Parquet's list item name


@pytest.mark.fault("unreadable_manifest")
def test_an_unreadable_manifest_stops_the_night_naming_the_file(store, monkeypatch):
    rel = store.manifest_rel(DEPOT, NIGHT)
    store.write_bytes(rel, b"PAR1 this is not parquet")
    _model(store, monkeypatch)
    with pytest.raises(ManifestError, match=f"^manifest {re.escape(store.url(rel))} is unreadable: .+") as err:
        plan_night(store, DEPOT, NIGHT, "diffmap")
    assert rel in str(err.value) and not CONTROL.search(str(err.value))
    assert not store.exists(f"maps/{DEPOT}")


def test_a_missing_manifest_is_file_not_found(store):
    with pytest.raises(FileNotFoundError, match=f"no manifest for depot '{DEPOT}' night {NIGHT}"):
        store.check_manifest(DEPOT, NIGHT)
