"""SQL over the reports with DuckDB: views ``captures`` and ``findings`` over the hive-partitioned Parquet."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from .layout import Store
from .schemas import PARTITION_SCHEMA, REPORT_SCHEMAS

if TYPE_CHECKING:
    import duckdb


def connect(store: Store) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one view per report table (empty views when nothing was written yet).

    Reads go through the store's fsspec filesystem (DuckDB's httpfs extension would need the internet to
    install), so s3:// stores work the same as local folders.
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
    return con


def run_query(store: Store, sql: str) -> pd.DataFrame:
    """Run DuckDB SQL over the ``captures`` and ``findings`` views; ValueError for an empty or failing query."""
    if not sql.strip():
        raise ValueError("empty query")
    import duckdb

    con = connect(store)
    try:
        return con.execute(sql).df()
    except duckdb.Error as exc:  # SQL mistakes are bad input: a clear message, not a traceback
        raise ValueError(f"query failed: {exc}") from exc
    finally:
        con.close()
