"""Report rows are dataclasses whose fields are the report schemas: a row written is the row read back."""

import dataclasses
import datetime as dt

import pandas as pd
import pyarrow as pa
import pytest

from anodet_core.store.layout import Store
from anodet_core.store.schemas import (
    CAPTURE_REPORT_SCHEMA,
    FINDING_REPORT_SCHEMA,
    CaptureRow,
    Decision,
    FindingRow,
    Status,
    table_from_rows,
)

AT = dt.datetime(2026, 11, 30, 22, 15, tzinfo=dt.UTC)


def _row(**kw) -> CaptureRow:
    base = dict(capture_id="c0", train_id="T1", car=3, region_id="R0", captured_at=AT, uri="captures/d/c0.jpg",
                status=Status.OK)
    return CaptureRow(**{**base, **kw})


def test_row_fields_are_the_schema_columns_in_order():
    assert [f.name for f in dataclasses.fields(CaptureRow)] == CAPTURE_REPORT_SCHEMA.names
    assert [f.name for f in dataclasses.fields(FindingRow)] == FINDING_REPORT_SCHEMA.names
    with pytest.raises(TypeError):  # a capture row without its status cannot be built
        CaptureRow(capture_id="c0", train_id="T1", car=3, region_id="R0", captured_at=AT, uri="u")


def test_rows_round_trip_through_the_report(tmp_path):
    store = Store(str(tmp_path))
    rows = [_row(decision=Decision.ANOMALOUS, score_max=0.75, capture_score=0.5, n_findings=1, map_index=0,
                 processed_at=AT),
            _row(capture_id="c1", status=Status.ERROR, error="checksum mismatch", map_index=1)]
    finds = [FindingRow(capture_id="c0", finding_id=0, train_id="T1", car=3, region_id="R0", x0=1, y0=2, x1=5, y1=9,
                        area_px=20, peak_score=0.75, mean_score=0.6)]
    store.write_report("captures", "d", "2026-11-30", rows)
    store.write_report("findings", "d", "2026-11-30", finds)
    back = store.read_report("captures").set_index("capture_id")
    assert back.loc["c0", "decision"] == "anomalous" and back.loc["c0", "score_max"] == pytest.approx(0.75)
    assert back.loc["c1", "status"] == "error" and back.loc["c1", "error"] == "checksum mismatch"
    assert pd.isna(back.loc["c1", "decision"]) and back.loc["c0", "captured_at"] == AT
    f = store.read_report("findings").iloc[0]
    assert (f.x0, f.y0, f.x1, f.y1, f.area_px) == (1, 2, 5, 9, 20)


def test_table_from_rows_refuses_what_is_not_a_row():
    with pytest.raises(TypeError, match="not int"):
        table_from_rows([1], CAPTURE_REPORT_SCHEMA)
    with pytest.raises(ValueError, match="unknown columns"):
        table_from_rows([{"capture_id": "c", "bogus": 1}], CAPTURE_REPORT_SCHEMA)
    t = table_from_rows([_row()], CAPTURE_REPORT_SCHEMA)
    assert t.schema.equals(CAPTURE_REPORT_SCHEMA) and t.column("car").type == pa.int32()
