"""Contracts written out literally: ``ANODET_*`` parsing (anodet_core/config.py) and the two report tables'
(name, type) columns (anodet_core/layout.py). A change to either must change this file too."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pytest

from anodet_core.config import Settings
from anodet_core.layout import CAPTURE_REPORT_SCHEMA, FINDING_REPORT_SCHEMA, REPORT_SCHEMAS, Store

# ------------------------------------------------------------------------------------------ report schemas

TS = pa.timestamp("us", tz="UTC")
CAPTURES = [
    ("capture_id", pa.string()), ("train_id", pa.string()), ("car", pa.int32()), ("region_id", pa.string()),
    ("captured_at", TS), ("uri", pa.string()), ("status", pa.string()), ("decision", pa.string()),
    ("error", pa.string()), ("history_source", pa.string()), ("history_capture_id", pa.string()),
    ("history_uri", pa.string()), ("model_name", pa.string()), ("model_version", pa.string()),
    ("threshold", pa.float32()), ("reg_method", pa.string()), ("reg_ok", pa.bool_()), ("reg_inliers", pa.int32()),
    ("reg_residual_px", pa.float32()), ("reg_ncc_before", pa.float32()), ("reg_ncc_after", pa.float32()),
    ("score_max", pa.float32()), ("score_mean", pa.float32()), ("capture_score", pa.float32()),
    ("anomalous_area_px", pa.int64()),
    ("anomalous_area_frac", pa.float32()), ("n_findings", pa.int32()), ("second_model", pa.string()),
    ("second_score", pa.float32()), ("second_anomalous", pa.bool_()), ("map_uri", pa.string()),
    ("map_index", pa.int32()), ("t_decode_ms", pa.float32()), ("t_register_ms", pa.float32()),
    ("t_infer_ms", pa.float32()), ("t_write_ms", pa.float32()), ("run_id", pa.string()), ("processed_at", TS),
]
FINDINGS = [
    ("capture_id", pa.string()), ("finding_id", pa.int32()), ("train_id", pa.string()), ("car", pa.int32()),
    ("region_id", pa.string()), ("x0", pa.int32()), ("y0", pa.int32()), ("x1", pa.int32()), ("y1", pa.int32()),
    ("area_px", pa.int64()), ("peak_score", pa.float32()), ("mean_score", pa.float32()),
    ("model_name", pa.string()), ("model_version", pa.string()), ("run_id", pa.string()),
]


def _columns(schema: pa.Schema) -> list[tuple[str, pa.DataType]]:
    return [(f.name, f.type) for f in schema]


def test_report_tables_have_the_written_down_columns_and_types():
    assert sorted(REPORT_SCHEMAS) == ["captures", "findings"]
    assert _columns(CAPTURE_REPORT_SCHEMA) == CAPTURES
    assert _columns(FINDING_REPORT_SCHEMA) == FINDINGS
    assert REPORT_SCHEMAS["captures"] is CAPTURE_REPORT_SCHEMA and REPORT_SCHEMAS["findings"] is FINDING_REPORT_SCHEMA


def test_report_files_carry_that_contract_plus_the_partition_columns(tmp_path):
    """What a reader of the store sees (each Parquet file's own schema, the dataset, DuckDB's views) is the contract."""
    import pyarrow.parquet as pq

    from anodet_core.query import run_query

    store = Store(str(tmp_path))
    urls = {"captures": store.write_report("captures", "d1", "2026-01-02", [dict(capture_id="a", status="ok")]),
            "findings": store.write_report("findings", "d1", "2026-01-02", [dict(capture_id="a", finding_id=0, x0=1)])}
    for table, expected in (("captures", CAPTURES), ("findings", FINDINGS)):
        assert _columns(pq.read_schema(store.fs.open(store.path(urls[table])))) == expected, table
        back = store.report_dataset(table).to_table()
        assert _columns(back.schema) == expected + [("depot", pa.string()), ("night", pa.string())], table
        cols = run_query(store, f"select * from {table}").columns.tolist()
        assert cols == [n for n, _ in expected] + ["depot", "night"], table


# ------------------------------------------------------------------------------------------ Settings.from_env


@pytest.fixture
def env(monkeypatch):
    """Set ANODET_* variables for one test (conftest removes every ANODET_* variable at start-up)."""
    for f in dataclasses.fields(Settings):
        monkeypatch.delenv(f"ANODET_{f.name.upper()}", raising=False)

    def set_(**values: str) -> None:
        for k, v in values.items():
            monkeypatch.setenv(f"ANODET_{k.upper()}", v)

    return set_


def test_defaults_without_environment(env):
    assert Settings.from_env() == Settings()
    s = Settings()
    assert (s.store, s.dask_address, s.dask_workers, s.dask_threads, s.torch_threads, s.device) == (
        "./anodet-data", "", 1, 1, 0, "auto")
    assert (s.batch_size, s.task_pairs, s.threshold, s.min_finding_area, s.model, s.fast) == (8, 64, None, None, "anodfdnet", True)
    assert (s.registration, s.prep_processes, s.map_dtype, s.single_image, s.second_opinion) == (
        "auto", -1, "uint8", "csaflow", False)


def test_each_type_is_parsed_from_the_environment(env):
    env(store="s3://bucket/prefix", dask_address="tcp://10.0.0.1:8786", dask_workers="3", dask_threads="2",
        torch_threads="4", device="cuda:1", batch_size="16", task_pairs="128", threshold="0.35", min_finding_area="12",
        model="unet_cat", fast="false", registration="phase", prep_processes="0", map_dtype="float16",
        single_image="", second_opinion="1")
    s = Settings.from_env()
    assert s == Settings(store="s3://bucket/prefix", dask_address="tcp://10.0.0.1:8786", dask_workers=3, dask_threads=2,
                         torch_threads=4, device="cuda:1", batch_size=16, task_pairs=128, threshold=0.35,
                         min_finding_area=12, model="unet_cat", fast=False, registration="phase", prep_processes=0,
                         map_dtype="float16", single_image="", second_opinion=True)
    for name in ("dask_workers", "dask_threads", "torch_threads", "batch_size", "task_pairs", "min_finding_area",
                 "prep_processes"):
        assert type(getattr(s, name)) is int, name
    assert type(s.threshold) is float and type(s.fast) is bool and type(s.second_opinion) is bool
    assert s.storage_options == {}  # never from the environment


@pytest.mark.parametrize("raw", ["1", "true", "True", "YES", "on", " on "])
def test_true_spellings(env, raw):
    env(fast="0", second_opinion=raw)
    assert Settings.from_env().second_opinion is True


@pytest.mark.parametrize("raw", ["0", "false", "FALSE", "no", "off"])
def test_false_spellings(env, raw):
    env(fast=raw)
    assert Settings.from_env().fast is False


def test_empty_threshold_and_min_area_mean_the_cards(env):
    env(threshold="", min_finding_area="  ")
    s = Settings.from_env()
    assert s.threshold is None and s.min_finding_area is None
    env(threshold="0", min_finding_area="1")
    s = Settings.from_env()
    assert s.threshold == 0.0 and s.min_finding_area == 1  # falsy values are values, not "unset"


def test_explicit_overrides_win_and_none_overrides_are_ignored(env):
    env(batch_size="16", threshold="0.3", fast="1", store="/env/store", min_finding_area="10")
    s = Settings.from_env(batch_size=2, threshold=0.0, fast=False, store=None, min_finding_area=None)
    assert (s.batch_size, s.threshold, s.fast) == (2, 0.0, False)  # 0.0 and False are overrides, not "unset"
    assert s.store == "/env/store" and s.min_finding_area == 10  # None keeps the environment's value
    assert Settings.from_env(map_dtype="float16").map_dtype == "float16"
    assert s.with_(batch_size=None, task_pairs=3) == Settings.from_env(batch_size=2, threshold=0.0, fast=False, task_pairs=3)


@pytest.mark.parametrize("name, raw", [("batch_size", "eight"), ("batch_size", "8.5"), ("dask_workers", ""),
                                       ("prep_processes", "-1.0"), ("threshold", "high"), ("threshold", "0,5"),
                                       ("min_finding_area", "64px"), ("min_finding_area", "6.4")])
def test_bad_numbers_raise(env, name, raw):
    env(**{name: raw})
    with pytest.raises(ValueError):
        Settings.from_env()


def test_unknown_override_raises(env):
    with pytest.raises(TypeError):
        Settings.from_env(batchsize=3)


@pytest.mark.parametrize("raw", ["ture", "2", "enabled"])
def test_bad_booleans_raise(env, raw):
    env(fast=raw)
    with pytest.raises(ValueError):
        Settings.from_env()
