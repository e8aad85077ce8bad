"""Paths confined to the store: names, manifest and report uris, symlinks out of a local store, the setting
that allows URL prefixes, and the Markdown summary's escaping. Night-level cases are in test_manifest_faults.py."""

from __future__ import annotations

import datetime as dt
import os
import re

import pytest

from anodet_core.config import InvalidSetting, Settings
from anodet_core.night.history import resolve_histories
from anodet_core.night.plan import NightSummary
from anodet_core.store.layout import Store
from anodet_core.store.names import check_name, check_uri

NIGHT0, NIGHT1 = "2026-08-01", "2026-08-02"
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")  # newlines separate the summary's lines


@pytest.mark.parametrize("value", ["", ".", "..", "../x", "a/b", "a\x00b", "a\n", "\x1b[31mR", "-a", "a b", None, 3])
def test_names_that_could_escape_or_confuse_the_layout_are_refused(value):
    with pytest.raises(ValueError, match=r"^invalid capture_id .*: use letters, digits") as err:
        check_name(value, "capture_id")
    assert not CONTROL.search(str(err.value))  # the value is escaped


@pytest.mark.parametrize("value", ["a", "C0", "T001-c1.R01", "x_y"])
def test_plain_names_pass(value):
    assert check_name(value, "capture_id") == value


@pytest.mark.parametrize("uri, why", [
    ("/etc/passwd", "is absolute"), ("captures/../../etc/passwd", r"climbs out of its folder \('\.\.'\)"),
    ("..", "climbs out"), ("s3://other/x.jpg", "is a URL"), ("file:///etc/passwd", "is a URL"),
    ("memory:x", "is a URL"), ("C:/x.jpg", "is a URL"), ("captures\\x.jpg", "holds a backslash"),
    ("captures/a\x00.jpg", "holds a control character"), ("captures/\x1b[2Jx.jpg", "holds a control character"),
    ("", "is not a path"), (None, "is not a path"),
])
def test_unsafe_uris_are_refused(uri, why):
    with pytest.raises(ValueError, match=why) as err:
        check_uri(uri)
    assert not CONTROL.search(str(err.value))


def test_allowed_prefixes_let_urls_under_them_through_and_nothing_else():
    allowed = ("s3://uploads/robot", "file:///mnt/captures/")
    assert check_uri("captures/d/2026-08-01/c.jpg") == "captures/d/2026-08-01/c.jpg"
    assert check_uri("s3://uploads/robot/c.jpg", allowed) == "s3://uploads/robot/c.jpg"
    assert check_uri("file:///mnt/captures/a/c.jpg", allowed) == "file:///mnt/captures/a/c.jpg"
    for uri in ("s3://uploads/robotx/c.jpg", "s3://uploads/c.jpg", "file:///mnt/other/c.jpg"):  # '/' boundary
        with pytest.raises(ValueError, match="is a URL"):
            check_uri(uri, allowed)
    for uri in ("s3://uploads/robot/../secret.jpg", "/mnt/captures/c.jpg"):  # never, whatever the prefixes
        with pytest.raises(ValueError):
            check_uri(uri, (*allowed, "/mnt/captures"))


def test_the_allowed_prefixes_setting(monkeypatch):
    assert Settings().allowed_uri_prefixes == ()
    monkeypatch.setenv("ANODET_ALLOWED_URI_PREFIXES", " s3://uploads/robot/ ,file:///mnt/c,, ")
    s = Settings.from_env()
    assert s.allowed_uri_prefixes == ("s3://uploads/robot/", "file:///mnt/c")
    assert s.with_(batch_size=2).allowed_uri_prefixes == s.allowed_uri_prefixes
    assert Settings(allowed_uri_prefixes=["s3://a/"]).allowed_uri_prefixes == ("s3://a/",)
    for bad in ("/mnt/captures", "s3://a/../b", "s3://a/\x1b"):
        monkeypatch.setenv("ANODET_ALLOWED_URI_PREFIXES", bad)
        with pytest.raises(InvalidSetting, match="^ANODET_ALLOWED_URI_PREFIXES=.*use URL prefixes"):
            Settings.from_env()


# ------------------------------------------------------------------------------------------ Store.path


@pytest.fixture
def local(tmp_path) -> tuple[Store, str]:
    """A local store and a folder next to it (outside the store) holding secret.txt."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    store = Store(str(tmp_path / "store"))
    store.write_text("captures/d/ok.txt", "ok")
    return store, str(outside)


@pytest.mark.fault("symlink_out_of_store")
def test_a_symlink_out_of_a_local_store_is_refused(local):
    store, outside = local
    os.symlink(os.path.join(outside, "secret.txt"), store.path("captures/d/link.jpg"))
    os.symlink(outside, store.path("captures/linked-folder"))
    for rel in ("captures/d/link.jpg", "captures/linked-folder/secret.txt"):
        with pytest.raises(PermissionError, match="leaves the store"):
            store.read_bytes(rel)
        with pytest.raises(PermissionError, match="leaves the store"):
            store.exists(rel)
    with pytest.raises(PermissionError, match="leaves the store"):  # nor written through
        store.write_text("captures/linked-folder/new.txt", "x")
    assert not os.path.exists(os.path.join(outside, "new.txt"))
    # a link that stays inside the store is fine
    os.symlink(store.path("captures/d/ok.txt"), store.path("captures/d/inside.txt"))
    assert store.read_text("captures/d/inside.txt") == "ok"


@pytest.mark.fault("path_out_of_store")
def test_store_paths_that_climb_or_are_absolute_outside_are_refused(local):
    store, outside = local
    for rel in ("../outside/secret.txt", "captures/../../outside/secret.txt", os.path.join(outside, "secret.txt"),
                "captures/\x00.txt"):
        with pytest.raises(PermissionError, match="leaves the store"):
            store.read_bytes(rel)
    assert store.read_text(store.path("captures/d/ok.txt")) == "ok"  # an absolute path in the store (what url() gives)
    assert store.read_text("captures/d/ok.txt") == "ok"


def test_a_store_under_a_symlinked_root_still_reads(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "alias")
    store = Store(str(tmp_path / "alias"))
    store.write_text("a/b.txt", "x")
    assert store.read_text("a/b.txt") == "x" and store.exists("a/b.txt")


# ------------------------------------------------------------------------------------------ histories


def _report_row(cid: str, night: str, uri: str, region: str = "R1") -> dict:
    d = dt.date.fromisoformat(night)
    return dict(capture_id=cid, train_id="T1", car=1, region_id=region, status="ok", decision="normal", uri=uri,
                captured_at=dt.datetime(d.year, d.month, d.day, 1, tzinfo=dt.UTC))


def _manifest_row(cid: str, region: str) -> dict:
    return dict(capture_id=cid, depot="d", night=NIGHT1, train_id="T1", car=1, region_id=region,
                captured_at=dt.datetime(2026, 8, 2, 1, tzinfo=dt.UTC), uri=f"captures/d/{NIGHT1}/{cid}.jpg",
                sha256=None, width=8, height=8)


@pytest.mark.fault("unsafe_history_uri")
@pytest.mark.parametrize("uri", ["/etc/passwd", "../../etc/passwd", "s3://elsewhere/x.jpg", "captures/\x1b[2J.jpg"])
def test_an_earlier_capture_whose_report_uri_leaves_the_store_is_no_history(tmp_path, uri, caplog):
    store = Store(str(tmp_path))
    store.write_report("captures", "d", NIGHT0, [_report_row("old-bad", NIGHT0, uri, "R1"),
                                                 _report_row("old-good", NIGHT0, f"captures/d/{NIGHT0}/old-good.jpg", "R2")])
    store.write_bytes(Store.reference_rel("T1", 1, "R1"), b"ref")
    store.write_manifest("d", NIGHT1, [_manifest_row("new1", "R1"), _manifest_row("new2", "R2")])
    jobs = resolve_histories(store, store.read_manifest("d", NIGHT1), "d", NIGHT1)
    assert [(j.history_source, j.history_capture_id, j.history_uri) for j in jobs] == [
        ("reference", None, "references/T1/1/R1.jpg"),  # not the unsafe earlier capture
        ("capture", "old-good", f"captures/d/{NIGHT0}/old-good.jpg"),
    ]
    assert "not confined to the store" in caplog.text and not CONTROL.search(caplog.text.replace("\n", ""))
    # the same uri under an allowed prefix is a history
    if uri.startswith("s3://"):
        jobs = resolve_histories(store, store.read_manifest("d", NIGHT1), "d", NIGHT1, allowed_uri_prefixes=("s3://elsewhere",))
        assert jobs[0].history_capture_id == "old-bad"


def test_invalid_rows_get_no_history_and_the_others_do(tmp_path):
    store = Store(str(tmp_path))
    store.write_report("captures", "d", NIGHT0, [_report_row("old", NIGHT0, f"captures/d/{NIGHT0}/old.jpg")])
    bad = {**_manifest_row("new0", "R1"), "captured_at": None}  # a null merge key must not break the match
    store.write_manifest("d", NIGHT1, [bad, _manifest_row("new1", "R1")])
    checked = store.check_manifest("d", NIGHT1)
    assert checked.invalid == ["captured_at is null", None]
    jobs = resolve_histories(store, checked.rows, "d", NIGHT1, checked.invalid)
    assert [(j.index, j.invalid, j.history_capture_id) for j in jobs] == [(0, "captured_at is null", None), (1, None, "old")]
    assert jobs[0].capture["captured_at"] is None and jobs[0].history_uri is None


@pytest.mark.fault("hostile_reference_name")
def test_a_reference_that_is_not_a_name_is_skipped(tmp_path):
    store = Store(str(tmp_path))
    store.write_bytes("references/T1/1/R1.jpg", b"ref")
    store.write_bytes("references/T1/1/R\x1b1.jpg", b"ref")
    store.write_manifest("d", NIGHT1, [_manifest_row("new1", "R1")])
    (job,) = resolve_histories(store, store.read_manifest("d", NIGHT1), "d", NIGHT1)
    assert job.history_uri == "references/T1/1/R1.jpg"


# ------------------------------------------------------------------------------------------ Markdown summary


@pytest.mark.fault("hostile_ids_in_summary")
def test_the_markdown_summary_escapes_every_value_from_outside():
    hostile = dict(capture_id="c\x1b[31m|red", train_id="T\n1", car=None, region_id="R\x00", status="invalid_manifest",
                   decision=None, capture_score=float("nan"), score_max=None, n_findings=None, label="")
    ok = dict(capture_id="c1", train_id="T1", car=2.0, region_id="R1", status="ok", decision="normal", capture_score=0.25,
              score_max=0.5, n_findings=0, label="normal")
    md = NightSummary(depot="d", night=NIGHT1, model="m:1", n_captures=2, by_status={"ok": 1, "invalid\x07": 1},
                      n_anomalous=0, top=[ok, hostile], maps_url="maps/\x1b]0;x\x07", reports={"captures": "r\r"}).markdown()
    assert not CONTROL.search(md)
    assert "| 2 | c\\x1b[31m\\|red | T\\n1//R\\x00 | invalid_manifest |  |  |  | 0 |  |" in md.splitlines()
    assert "| 1 | c1 | T1/2/R1 | ok | normal | 0.250 | 0.500 | 0 | normal |" in md.splitlines()
    assert "invalid\\x07: 1" in md and "maps: maps/\\x1b]0;x\\x07" in md and "captures: r\\r" in md
