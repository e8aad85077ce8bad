"""SQL over the reports with DuckDB: views ``captures`` and ``findings`` over the hive-partitioned Parquet, ``labels``
(ground truth with each capture's latest verdict over it), ``verdicts`` (every verdict ever given) and the named
questions of :mod:`anodet_core.store.questions` (``top_regions``, ``region_trend``, ``false_alarms``, ``night_summary``).

Read-only: once the views exist the connection has no file system, extensions or settings of its own (see
:func:`connect`), so a query cannot write a file (``COPY ... TO``), read one outside the reports
(``read_csv('/etc/passwd')``), attach a database, load an extension or switch any of that back on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from .layout import Store
from .questions import QUESTIONS
from .schemas import LABELS_SCHEMA, PARTITION_SCHEMA, REPORT_SCHEMAS, VERDICT_SCHEMA

if TYPE_CHECKING:
    import duckdb

_REFUSED = "anodet query only reads the store's views (captures, findings, labels, verdicts, named questions): no files, extensions or settings"


def connect(store: Store) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one view per report table, ``labels``, ``verdicts`` and the named questions (empty
    views when nothing was written yet).

    Reads go through the store's fsspec filesystem (DuckDB's httpfs extension would need the internet to
    install), so s3:// stores work the same as local folders.

    The views scan registered pyarrow datasets, which read through pyarrow and fsspec, never through DuckDB's
    own file system; so external access is switched off entirely (no ``allowed_directories`` needed) and the
    configuration locked, which refuses every later ``SET``/``RESET``/``PRAGMA`` that changes a setting.
    """
    import duckdb
    import pyarrow as pa

    con = duckdb.connect()
    for table in REPORT_SCHEMAS:
        ds = store.report_dataset(table)
        if ds is None:
            empty = pa.unify_schemas([REPORT_SCHEMAS[table], PARTITION_SCHEMA]).empty_table()
            con.register(f"_{table}", empty)
        else:
            con.register(f"_{table}", ds)  # pyarrow dataset: filters and projections are pushed down
        con.execute(f"create view {table} as select * from _{table}")
    for name, frame, schema in (("labels", store.all_labels(), LABELS_SCHEMA), ("verdicts", store.read_verdicts(), VERDICT_SCHEMA)):
        full = pa.unify_schemas([schema, PARTITION_SCHEMA])
        con.register(f"_{name}", pa.Table.from_pandas(frame[full.names], schema=full, preserve_index=False))
        con.execute(f"create view {name} as select * from _{name}")
    for q in QUESTIONS.values():
        con.execute(f"create view {q.view} as {q.sql}")
    con.execute("set enable_external_access = false")
    con.execute("set lock_configuration = true")  # last: from here on no setting can change
    return con


def _refused(exc: Exception) -> ValueError:
    """One line: what is refused and DuckDB's reason (its first line; the rest points into the SQL)."""
    return ValueError(f"query refused ({_REFUSED}): {str(exc).splitlines()[0]}")


def run_query(store: Store, sql: str, params: list[object] | None = None) -> pd.DataFrame:
    """Run DuckDB SQL (``?`` placeholders bound to ``params``) over the views of :func:`connect`; ValueError for an
    empty, failing or refused query (one that reaches for files, extensions or settings)."""
    if not sql.strip():
        raise ValueError("empty query")
    import duckdb

    con = connect(store)
    try:
        return con.execute(sql, params or []).df()
    except duckdb.PermissionException as exc:
        raise _refused(exc) from None
    except duckdb.Error as exc:  # SQL mistakes are bad input: a clear message, not a traceback
        if "configuration has been locked" in str(exc):  # DuckDB's wording; its type is a plain InvalidInputException
            raise _refused(exc) from None
        raise ValueError(f"query failed: {exc}") from exc
    finally:
        con.close()
