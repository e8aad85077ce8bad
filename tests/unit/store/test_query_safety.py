"""`anodet query` is read-only over the reports: the views work, files, extensions and settings do not."""

import datetime as dt
import os
import uuid

import pytest

from anodet_core.store.layout import Store
from anodet_core.store.query import run_query
from anodet_core.store.schemas import Decision, Status
from flows.cli import main

AT = dt.datetime(2026, 11, 30, 22, 15, tzinfo=dt.UTC)


def _write_reports(store: Store) -> None:
    """Two nights of one depot: three captures (one anomalous, with two findings)."""
    def cap(cid, decision, score):
        return dict(capture_id=cid, train_id="T1", car=1, region_id="R0", captured_at=AT, uri=f"captures/d/{cid}.jpg",
                    status=Status.OK, decision=decision, score_max=score, n_findings=2 if decision == "anomalous" else 0)

    def finding(fid):
        return dict(capture_id="b", finding_id=fid, train_id="T1", car=1, region_id="R0", x0=1, y0=2, x1=5, y1=9,
                    area_px=20, peak_score=0.75, mean_score=0.6)

    store.write_report("captures", "d1", "2026-11-29", [cap("a", Decision.NORMAL, 0.125)])
    store.write_report("captures", "d1", "2026-11-30", [cap("b", Decision.ANOMALOUS, 0.75), cap("c", Decision.NORMAL, 0.25)])
    store.write_report("findings", "d1", "2026-11-30", [finding(0), finding(1)])


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "store"))
    _write_reports(s)
    return s


def _refused(store: Store, sql: str) -> str:
    with pytest.raises(ValueError, match="query refused") as exc:
        run_query(store, sql)
    return str(exc.value)


def test_the_views_still_answer(store):
    df = run_query(store, "select night, capture_id, decision, score_max from captures order by capture_id")
    assert df.capture_id.tolist() == ["a", "b", "c"]
    assert df.night.tolist() == ["2026-11-29", "2026-11-30", "2026-11-30"]
    assert df.decision.tolist() == ["normal", "anomalous", "normal"] and df.score_max.tolist() == [0.125, 0.75, 0.25]
    joined = run_query(store, "select c.capture_id, count(*) n from captures c join findings f using (capture_id) group by all")
    assert joined.to_dict("records") == [{"capture_id": "b", "n": 2}]


@pytest.mark.fault("query_escape")
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_copy_to_is_refused_and_writes_nothing(store, tmp_path, fmt):
    target = tmp_path / f"leak.{fmt}"
    msg = _refused(store, f"copy captures to '{target}' (format {fmt})")
    assert "file system operations are disabled" in msg
    assert not target.exists()
    outside = tmp_path / "export"
    _refused(store, f"export database '{outside}'")
    assert not outside.exists()
    assert sorted(os.listdir(tmp_path)) == ["store"]


@pytest.mark.fault("query_escape")
@pytest.mark.parametrize("sql", [
    "select * from read_csv('/etc/passwd')",
    "select * from read_text('/etc/hostname')",
    "select * from glob('/etc/*')",
    "select * from read_parquet('{parts}')",  # the store's own files: only through the views
])
def test_reading_files_is_refused(store, sql):
    parts = store.path("reports/captures/**/*.parquet")
    msg = _refused(store, sql.format(parts=parts))
    assert "file system operations are disabled" in msg


@pytest.mark.fault("query_escape")
@pytest.mark.parametrize("sql", [
    "set enable_external_access = true",
    "reset enable_external_access",
    "set lock_configuration = false",
    "set allowed_directories = ['/']",
    "pragma enable_profiling",
    "set profiling_output = '/tmp/anodet-profile.json'",
    "set temp_directory = '/tmp'",
])
def test_switching_the_guard_off_is_refused(store, sql):
    assert "locked" in _refused(store, sql)
    # the connection of the next query is as locked down as the first one
    assert "file system operations are disabled" in _refused(store, "select * from read_csv('/etc/passwd')")


@pytest.mark.fault("query_escape")
@pytest.mark.parametrize("sql", ["attach '{db}' as other", "install httpfs", "load httpfs", "create secret (type s3)"])
def test_attach_extensions_and_secrets_are_refused(store, tmp_path, sql):
    db = tmp_path / "other.duckdb"
    _refused(store, sql.format(db=db))
    assert not db.exists()


@pytest.mark.fault("query_escape")
def test_the_cli_says_refused_in_one_line_and_exits_2(store, tmp_path, capsys):
    target = tmp_path / "leak.csv"
    assert main(["--store", store.root, "query", f"copy captures to '{target}'"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: query refused") and len(err.splitlines()) == 1 and not target.exists()
    assert main(["--store", store.root, "query", "select * from read_csv('/etc/passwd')"]) == 2
    assert len(err := capsys.readouterr().err.splitlines()) == 1 and "disabled by configuration" in err[0]
    assert main(["--store", store.root, "query", "select count(*) n from findings", "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ["n", "2"]


@pytest.fixture
def s3_store(moto_endpoint, tmp_path, monkeypatch):
    """A store in a fresh moto bucket, credentials and endpoint from the environment only."""
    for k in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(k, raising=False)
    for k, v in {"AWS_ENDPOINT_URL_S3": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(tmp_path / "none"),
                 "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(k, v)
    import boto3
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"anodet-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    store = Store(f"s3://{bucket}/store")
    _write_reports(store)
    yield store
    s3fs.S3FileSystem.clear_instance_cache()


def test_an_s3_store_is_queried_through_fsspec_behind_the_same_guard(s3_store):
    assert not s3_store.is_local
    df = run_query(s3_store, "select capture_id from captures where decision = 'anomalous'")
    assert df.capture_id.tolist() == ["b"]
    assert run_query(s3_store, "select count(*) n from findings").n.tolist() == [2]
    _refused(s3_store, "select * from read_csv('/etc/passwd')")
