"""Contracts written out literally: ``ANODET_*`` parsing (anodet_core/config.py), the two report tables'
(name, type) columns and their status/decision values (anodet_core/store/layout.py), and how CLI flags set settings
(flows/cli/_common.py). A change to any must change this file too."""

from __future__ import annotations

import pickle
from typing import get_args

import pyarrow as pa
import pytest

from anodet_core.config import SINGLE_IMAGE_ARCHS, InvalidSetting, Settings
from anodet_core.store.layout import Store
from anodet_core.store.schemas import (
    CAPTURE_REPORT_SCHEMA,
    DECISION_ANOMALOUS,
    DECISION_NORMAL,
    FINDING_REPORT_SCHEMA,
    REPORT_SCHEMAS,
    STATUS_ERROR,
    STATUS_NO_HISTORY,
    STATUS_OK,
    STATUS_REGISTRATION_FAILED,
    Decision,
    Status,
)

# ------------------------------------------------------------------------------------------ report schemas

TS = pa.timestamp("us", tz="UTC")
CAPTURES = [
    ("capture_id", pa.string()), ("train_id", pa.string()), ("car", pa.int32()), ("region_id", pa.string()),
    ("captured_at", TS), ("uri", pa.string()), ("status", pa.string()), ("decision", pa.string()),
    ("error", pa.string()), ("history_source", pa.string()), ("history_capture_id", pa.string()),
    ("history_uri", pa.string()), ("model_name", pa.string()), ("model_version", pa.string()), ("backend", pa.string()),
    ("threshold", pa.float32()), ("reg_method", pa.string()), ("reg_ok", pa.bool_()), ("reg_inliers", pa.int32()),
    ("reg_residual_px", pa.float32()), ("reg_ncc_before", pa.float32()), ("reg_ncc_after", pa.float32()),
    ("history_coverage", pa.float32()), ("score_max", pa.float32()), ("score_mean", pa.float32()), ("capture_score", pa.float32()),
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

    from anodet_core.store.query import run_query

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
    for name in Settings.env_names().values():
        monkeypatch.delenv(name, raising=False)

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
    assert s.storage_options == {}  # not set here: ANODET_STORAGE_OPTIONS is tested below


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
    with pytest.raises(ValueError, match=f"^ANODET_{name.upper()}={raw!r}: not an? (integer|number)$"):
        Settings.from_env()


def test_unknown_override_raises(env):
    with pytest.raises(TypeError):
        Settings.from_env(batchsize=3)


@pytest.mark.parametrize("raw", ["ture", "2", "enabled", "t", "n", ""])  # pydantic alone would take "t" and "n"
def test_bad_booleans_raise(env, raw):
    env(fast=raw)
    with pytest.raises(ValueError, match=f"^ANODET_FAST={raw!r}: not a boolean"):
        Settings.from_env()


@pytest.mark.parametrize("name, raw", [("device", "gpu"), ("device", "cuda1"), ("device", "cuda:x"), ("device", ""),
                                       ("registration", "sift"), ("registration", ""), ("map_dtype", "int8"),
                                       ("single_image", "spade"), ("single_image", "CSAFLOW"), ("second_opinion", "")])
def test_bad_choices_raise_naming_the_variable(env, name, raw):
    env(**{name: raw})
    with pytest.raises(InvalidSetting, match=f"^ANODET_{name.upper()}={raw!r}: "):
        Settings.from_env()
    with pytest.raises(ValueError, match=f"^{name}={raw!r}: "):  # a bad argument is named as the argument
        Settings(**{name: raw})


@pytest.mark.parametrize("name, raw", [("device", "cpu"), ("device", "cuda"), ("device", "cuda:12"), ("registration", "features"),
                                       ("map_dtype", "float16"), ("single_image", "anovit"), ("single_image", "")])
def test_good_choices_parse(env, name, raw):
    env(**{name: raw})
    assert getattr(Settings.from_env(), name) == raw


def test_choices_are_the_registered_ones():
    """The settings spell out the choices (no model code imported to read them); they must be the real ones."""
    from anodet_core.imaging.registration import METHODS
    from anodet_core.models import single_image_models

    assert get_args(Settings.model_fields["registration"].annotation) == METHODS
    assert sorted(SINGLE_IMAGE_ARCHS) == single_image_models()
    assert get_args(Settings.model_fields["single_image"].annotation) == (*SINGLE_IMAGE_ARCHS, "")
    assert get_args(Settings.model_fields["map_dtype"].annotation) == ("uint8", "float16")


@pytest.mark.parametrize("name, default, from_env, override", [
    ("batch_size", 8, ("16", 16), 2), ("threshold", None, ("0.3", 0.3), 0.0), ("device", "auto", ("cpu", "cpu"), "cuda:1"),
    ("fast", True, ("off", False), True), ("registration", "auto", ("phase", "phase"), "features"),
    ("single_image", "csaflow", ("", ""), "anovit"),
])
def test_default_then_environment_then_override(env, name, default, from_env, override):
    assert getattr(Settings.from_env(), name) == getattr(Settings(), name) == Settings.default(name) == default
    env(**{name: from_env[0]})
    assert getattr(Settings.from_env(), name) == getattr(Settings(), name) == from_env[1]
    assert getattr(Settings.from_env(**{name: None}), name) == from_env[1]  # None: not given
    assert getattr(Settings.from_env(**{name: override}), name) == getattr(Settings(**{name: override}), name) == override


def test_storage_options_from_the_environment_are_json_without_credentials(env):
    env(storage_options='{"anon": true, "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}')
    assert Settings.from_env().storage_options == {"anon": True, "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}
    for raw in ("not json", "[1]"):
        env(storage_options=raw)
        with pytest.raises(InvalidSetting, match="^ANODET_STORAGE_OPTIONS: not"):
            Settings.from_env()
    env(storage_options='{"client_kwargs": {"aws_secret_access_key": "S3CRET"}}')
    with pytest.raises(InvalidSetting, match="credential") as err:
        Settings.from_env()
    assert "S3CRET" not in str(err.value)  # a refused secret is never echoed
    assert Settings.env_names()["storage_options"] == "ANODET_STORAGE_OPTIONS"
    assert Settings.env_names()["min_finding_area"] == "ANODET_MIN_FINDING_AREA"


def test_copies_are_validated_frozen_and_picklable(env):
    s = Settings.from_env(store="/s", storage_options={"anon": True})
    env(batch_size="16")
    assert s.with_(task_pairs=3).batch_size == 8  # a copy is made of the settings, not of the environment now
    with pytest.raises(InvalidSetting, match="^device='gpu': "):
        s.with_(device="gpu")
    with pytest.raises(TypeError, match="batchsize"):
        s.with_(batchsize=3)
    with pytest.raises(ValueError):
        s.batch_size = 3  # type: ignore[misc]
    back = pickle.loads(pickle.dumps(s))  # as Dask ships it; unpickling reads no environment
    assert back == s and back.batch_size == 8 and back.storage_options == {"anon": True}


# ------------------------------------------------------------------------------------------ status and decision


def test_status_and_decision_values():
    assert [m.value for m in Status] == ["ok", "registration_failed", "no_history", "invalid_manifest", "missing", "io_error",
                                         "checksum_mismatch", "invalid_image", "error"]
    assert [m.value for m in Decision] == ["normal", "anomalous"]
    assert (STATUS_OK, STATUS_REGISTRATION_FAILED, STATUS_NO_HISTORY, STATUS_ERROR) == tuple(Status)[:3] + (Status.ERROR,)
    assert (DECISION_NORMAL, DECISION_ANOMALOUS) == tuple(Decision)
    assert STATUS_OK is Status.OK and DECISION_ANOMALOUS is Decision.ANOMALOUS


def test_status_and_decision_round_trip_through_a_written_report(tmp_path):
    import pyarrow.parquet as pq

    store = Store(str(tmp_path))
    pairs = [(Status.OK, Decision.ANOMALOUS), (Status.REGISTRATION_FAILED, Decision.NORMAL), (Status.NO_HISTORY, None),
             (Status.ERROR, None)]
    rows = [dict(capture_id=f"c{i}", status=status, decision=decision) for i, (status, decision) in enumerate(pairs)]
    url = store.write_report("captures", "d1", "2026-01-02", rows)
    written = pq.read_table(store.fs.open(store.path(url)))
    assert written.schema.field("status").type == pa.string() and written.schema.field("decision").type == pa.string()
    back = store.read_report("captures").sort_values("capture_id")
    assert back["status"].tolist() == ["ok", "registration_failed", "no_history", "error"]
    assert all(type(v) is str for v in back["status"])  # plain strings, not members
    assert [Status(v) for v in back["status"]] == [s for s, _ in pairs]
    assert [Decision(v) if isinstance(v, str) else None for v in back["decision"]] == [d for _, d in pairs]


# ------------------------------------------------------------------------------------------ CLI flags -> settings


def test_cli_flags_set_the_settings_of_the_table(env):
    from flows.cli import build_parser
    from flows.cli._common import SETTING_FLAGS, _settings

    assert set(SETTING_FLAGS.values()) <= set(Settings.model_fields)
    parser = build_parser()
    night = ["run-night", "--depot", "d", "--night", "2026-01-02"]
    given = parser.parse_args(["--store", "/flag", *night, "--model", "m", "--batch-size", "3", "--device", "cpu", "--second-opinion",
                               "--backend", "openvino"])
    assert {dest: getattr(given, dest) for dest in SETTING_FLAGS} == dict(store="/flag", model="m", batch_size=3, device="cpu",
                                                                         second_opinion=True, backend="openvino")
    s = _settings(given)
    assert (s.store, s.model, s.batch_size, s.device, s.second_opinion, s.backend) == ("/flag", "m", 3, "cpu", True, "openvino")
    assert _settings(parser.parse_args(night)) == Settings()  # no flag: the defaults
    env(store="/env", batch_size="5", second_opinion="yes")
    s = _settings(parser.parse_args(night))  # no flag: the environment
    assert (s.store, s.batch_size, s.second_opinion) == ("/env", 5, True)
    assert _settings(parser.parse_args([*night, "--batch-size", "4"])).batch_size == 4  # the flag over the environment
    env(device="gpu")
    with pytest.raises(InvalidSetting, match="ANODET_DEVICE='gpu'"):
        _settings(parser.parse_args(night))


def test_cli_help_states_the_settings_defaults():
    import argparse

    from flows.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help or "" for a in sub.choices["bench"]._actions}
    assert helps["store"].endswith(f"default {Settings.default('store')})")
    assert helps["batch_size"].endswith(f"(default {Settings.default('batch_size')})")
    assert helps["model"].endswith(f"(default: production {Settings.default('model')})")


def test_inference_resources_in_dask_worker_syntax(env):
    assert Settings.from_env().inference_resources == {}
    env(inference_resources="GPU=1,MEM=8e9")
    assert Settings.from_env().inference_resources == {"GPU": 1.0, "MEM": 8e9}
    for raw in ("GPU", "GPU=x", "GPU=0", "GPU=-1"):
        env(inference_resources=raw)
        with pytest.raises(InvalidSetting, match="^ANODET_INFERENCE_RESOURCES"):
            Settings.from_env()
