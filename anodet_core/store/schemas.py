"""The schemas of every table in the store, and one row type per report table.

Manifests and labels are written by the robot's side (:data:`MANIFEST_SCHEMA`, :data:`LABELS_SCHEMA`), verdicts by
analysts (:class:`VerdictRow`, ``anodet label``). A night
writes one :class:`CaptureRow` per capture of its manifest and one :class:`FindingRow` per finding, to
``reports/<table>/depot=<depot>/night=<night>/part-<generation>.parquet`` (:mod:`anodet_core.store.publish`).
Each report field carries its Arrow type, so the row type and the schema cannot drift apart; the column order of
the Parquet files is the field order. Columns are only ever added (nullable), so every night written before stays
readable: readers see a missing column as null.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

import pyarrow as pa

_UTC_US = pa.timestamp("us", tz="UTC")

MANIFEST_SCHEMA = pa.schema(
    [
        ("capture_id", pa.string()),
        ("depot", pa.string()),
        ("night", pa.string()),
        ("train_id", pa.string()),
        ("car", pa.int32()),
        ("region_id", pa.string()),
        ("captured_at", pa.timestamp("us", tz="UTC")),
        ("uri", pa.string()),  # relative to the store root, or an absolute URL
        ("sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)

LABELS_SCHEMA = pa.schema(
    [
        ("capture_id", pa.string()),
        ("anomalous", pa.bool_()),
        ("anomaly_type", pa.string()),  # foreign_body | missing_component | scratch | oil_leak | null
        ("mask_uri", pa.string()),  # relative to the store root; null when the capture is normal
    ]
)

ANOMALY_TYPES = ("foreign_body", "missing_component", "scratch", "oil_leak")


class Verdict(StrEnum):
    """An analyst's verdict on a capture (``anodet label``)."""

    ANOMALY = "anomaly"
    NORMAL = "normal"


# capture report values: the members are str, so Parquet receives (and comparisons with what is read back
# see) plain strings
class Status(StrEnum):
    """A capture report's ``status``: what happened to the capture (its ``decision`` says what was found)."""

    OK = "ok"
    REGISTRATION_FAILED = "registration_failed"  # scored against an unaligned history: read with care
    NO_HISTORY = "no_history"  # neither an earlier normal capture nor a pinned reference
    # not scored; `error` names the cause (a stable message: no tracebacks, no memory addresses)
    INVALID_MANIFEST = "invalid_manifest"  # the manifest row itself: a null, a wrong type, a hostile id or uri
    MISSING = "missing"  # the capture's (or its history's) file is not in the store
    IO_ERROR = "io_error"  # the store could not be read, still failing after the retries
    CHECKSUM_MISMATCH = "checksum_mismatch"  # the file's sha256 is not the manifest's
    INVALID_IMAGE = "invalid_image"  # not an image, truncated, too large, or not the size the manifest declares
    ERROR = "error"  # anything else that went wrong while scoring this capture


class Decision(StrEnum):
    """A capture report's ``decision`` (null when the capture was not scored)."""

    NORMAL = "normal"
    ANOMALOUS = "anomalous"


# the members under their module-level names
STATUS_OK = Status.OK
STATUS_REGISTRATION_FAILED = Status.REGISTRATION_FAILED
STATUS_NO_HISTORY = Status.NO_HISTORY
STATUS_ERROR = Status.ERROR
NOT_SCORED = frozenset(s for s in Status if s not in (Status.OK, Status.REGISTRATION_FAILED, Status.NO_HISTORY))
DECISION_NORMAL = Decision.NORMAL
DECISION_ANOMALOUS = Decision.ANOMALOUS


def _col(arrow: pa.DataType, *, required: bool = False) -> Any:
    """A report column: its Arrow type in the field's metadata; optional columns default to null."""
    if required:
        return dataclasses.field(metadata={"arrow": arrow})
    return dataclasses.field(default=None, metadata={"arrow": arrow})


@dataclasses.dataclass(kw_only=True)
class CaptureRow:
    """One capture of a night: what was compared with what, by which model, the figures and the decision."""

    capture_id: str = _col(pa.string(), required=True)
    train_id: str = _col(pa.string(), required=True)
    car: int = _col(pa.int32(), required=True)
    region_id: str = _col(pa.string(), required=True)
    captured_at: dt.datetime = _col(_UTC_US, required=True)
    uri: str = _col(pa.string(), required=True)
    status: Status = _col(pa.string(), required=True)
    decision: Decision | None = _col(pa.string())  # null when not scored
    error: str | None = _col(pa.string())
    history_source: str | None = _col(pa.string())  # capture | reference | null
    history_capture_id: str | None = _col(pa.string())
    history_uri: str | None = _col(pa.string())
    model_name: str | None = _col(pa.string())
    model_version: str | None = _col(pa.string())
    # the engine of the forward pass (ANODET_BACKEND's choice): torch, torch-eager, onnx, openvino, openvino-int8;
    # null when not scored and in nights written before it existed
    backend: str | None = _col(pa.string())
    threshold: float | None = _col(pa.float32())
    reg_method: str | None = _col(pa.string())
    reg_ok: bool | None = _col(pa.bool_())
    reg_inliers: int | None = _col(pa.int32())
    reg_residual_px: float | None = _col(pa.float32())  # native px
    reg_ncc_before: float | None = _col(pa.float32())
    reg_ncc_after: float | None = _col(pa.float32())
    # share of cur's pixels the registered history covers: a change in the rest cannot be seen by a paired
    # model (cur fills in there); null when not scored and in nights written before it existed
    history_coverage: float | None = _col(pa.float32())
    score_max: float | None = _col(pa.float32())
    score_mean: float | None = _col(pa.float32())
    # ranking score consistent with the decision: highest level holding a region of the minimum finding area
    # (anodet_core.scoring.postprocess.capture_score); null in nights written before it existed
    capture_score: float | None = _col(pa.float32())
    anomalous_area_px: int | None = _col(pa.int64())  # native px above threshold
    anomalous_area_frac: float | None = _col(pa.float32())
    n_findings: int | None = _col(pa.int32())
    # second opinion (ANODET_SECOND_OPINION): the region's single-image model on a capture WITH history;
    # informational, the decision stays the paired model's; null when off or the region has no such model
    second_model: str | None = _col(pa.string())  # NAME:VERSION
    second_score: float | None = _col(pa.float32())  # image score in that model's units
    second_anomalous: bool | None = _col(pa.bool_())  # second_score above the model card's image threshold
    map_uri: str | None = _col(pa.string())  # Zarr group, store-relative (a URL in nights written before generations)
    map_index: int | None = _col(pa.int32())  # row of the capture in the group's `maps` array
    t_decode_ms: float | None = _col(pa.float32())  # CPU ms of the preparing thread (helpers run beside the model)
    t_register_ms: float | None = _col(pa.float32())  # CPU ms, idem
    t_infer_ms: float | None = _col(pa.float32())  # per pair share of the batch forward pass
    t_write_ms: float | None = _col(pa.float32())
    run_id: str | None = _col(pa.string())
    processed_at: dt.datetime | None = _col(_UTC_US)


@dataclasses.dataclass(kw_only=True)
class FindingRow:
    """One finding: a connected region of the stored map above the threshold, with its box in native cur px."""

    capture_id: str = _col(pa.string(), required=True)
    finding_id: int = _col(pa.int32(), required=True)  # 0.. per capture, by decreasing peak score
    train_id: str = _col(pa.string(), required=True)
    car: int = _col(pa.int32(), required=True)
    region_id: str = _col(pa.string(), required=True)
    x0: int = _col(pa.int32(), required=True)  # bbox in native cur px, half-open [x0, x1) x [y0, y1)
    y0: int = _col(pa.int32(), required=True)
    x1: int = _col(pa.int32(), required=True)
    y1: int = _col(pa.int32(), required=True)
    area_px: int = _col(pa.int64(), required=True)
    peak_score: float = _col(pa.float32(), required=True)
    mean_score: float = _col(pa.float32(), required=True)
    model_name: str | None = _col(pa.string())
    model_version: str | None = _col(pa.string())
    run_id: str | None = _col(pa.string())


@dataclasses.dataclass(kw_only=True)
class VerdictRow:
    """One analyst's verdict on one capture, kept as its own file: a later verdict supersedes, none is overwritten.

    Verdicts overlay a night's labels (:meth:`anodet_core.store.layout.Store.read_labels`), so retraining and
    history resolution see an analyst's confirmation exactly as they see ground truth.
    """

    capture_id: str = _col(pa.string(), required=True)
    verdict: Verdict = _col(pa.string(), required=True)
    verdict_by: str = _col(pa.string(), required=True)
    verdict_at: dt.datetime = _col(_UTC_US, required=True)
    anomaly_type: str | None = _col(pa.string())  # one of ANOMALY_TYPES
    mask_uri: str | None = _col(pa.string())  # store-relative PNG
    note: str | None = _col(pa.string())


def schema_of(row_type: type) -> pa.Schema:
    """The Arrow schema of a row dataclass: its fields in order, each with the type in its metadata."""
    return pa.schema([(f.name, f.metadata["arrow"]) for f in dataclasses.fields(row_type)])


VERDICT_SCHEMA = schema_of(VerdictRow)
CAPTURE_REPORT_SCHEMA = schema_of(CaptureRow)
FINDING_REPORT_SCHEMA = schema_of(FindingRow)
REPORT_SCHEMAS = {"captures": CAPTURE_REPORT_SCHEMA, "findings": FINDING_REPORT_SCHEMA}
ROW_TYPES: dict[str, type] = {"captures": CaptureRow, "findings": FindingRow}
PARTITION_SCHEMA = pa.schema([("depot", pa.string()), ("night", pa.string())])


def row_dict(row: object) -> Mapping[str, Any]:
    """A row as a mapping: report dataclasses by field, mappings (manifest and label rows) as they are."""
    if dataclasses.is_dataclass(row) and not isinstance(row, type):
        return {f.name: getattr(row, f.name) for f in dataclasses.fields(row)}
    if isinstance(row, Mapping):
        return row
    raise TypeError(f"a table row must be a report row dataclass or a mapping, not {type(row).__name__}")


def table_from_rows(rows: Iterable[object], schema: pa.Schema) -> pa.Table:
    """Rows to a table of exactly ``schema``: missing keys become null, unknown keys are an error."""
    dicts = [row_dict(r) for r in rows]
    names = set(schema.names)
    for row in dicts:
        extra = set(row) - names
        if extra:
            raise ValueError(f"unknown columns {sorted(extra)} for schema {schema.names}")
    return pa.Table.from_pylist([{n: r.get(n) for n in schema.names} for r in dicts], schema=schema)
