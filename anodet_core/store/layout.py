"""The store: where everything lives under one fsspec root, and the schemas of every table.

This module is the single owner of paths; nothing else builds store paths by hand. The schemas of every table
(and the report row types) are :mod:`anodet_core.store.schemas`.

Layout under the root (``ANODET_STORE``: a local folder, ``file://``, ``s3://bucket/prefix``, ...)::

    captures/<depot>/<night>/<capture_id>.jpg          images left by the robot
    manifests/<depot>/<night>.parquet                   one row per capture (MANIFEST_SCHEMA)
    references/<train_id>/<car>/<region_id>.jpg         pinned good image of a region (history of last resort)
    labels/<depot>/<night>/labels.parquet               ground truth per capture (LABELS_SCHEMA)
    labels/<depot>/<night>/<capture_id>.png             pixel mask, white = anomaly, capture's native size
    maps/<depot>/<night>.zarr                           Zarr v3 group: anomaly maps of the night (see anodet_core.store.maps)
    reports/captures/depot=<depot>/night=<night>/part-0.parquet   one row per capture (CAPTURE_REPORT_SCHEMA)
    reports/findings/depot=<depot>/night=<night>/part-0.parquet   one row per finding (FINDING_REPORT_SCHEMA)
    models/<name>/versions/<version>/weights.safetensors + card.json   immutable model versions
    models/<name>/aliases/<alias>                       text file holding a version (e.g. "production")

Nights are ``YYYY-MM-DD`` strings. Report partitions are hive-style so pyarrow, pandas, DuckDB and Spark read
them as tables with ``depot`` and ``night`` columns; those two columns live in the path, not in the files.
"""

from __future__ import annotations

import datetime as dt
import io
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from .schemas import LABELS_SCHEMA, MANIFEST_SCHEMA, PARTITION_SCHEMA, REPORT_SCHEMAS, table_from_rows

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_name(value: str, what: str) -> str:
    """Names become path segments: refuse anything that could escape or confuse the layout."""
    if not isinstance(value, str) or not _NAME_RE.match(value) or value in {".", ".."}:
        raise ValueError(f"invalid {what} {value!r}: use letters, digits, '_', '-', '.'")
    return value


def check_night(night: str | dt.date) -> str:
    """Normalise a night to ``YYYY-MM-DD`` (accepts a date)."""
    if isinstance(night, dt.date):
        return night.isoformat()
    try:
        return dt.date.fromisoformat(str(night)).isoformat()
    except ValueError as exc:
        raise ValueError(f"invalid night {night!r}: expected YYYY-MM-DD") from exc


# --------------------------------------------------------------------------------------------- store


@dataclass
class Store:
    """An fsspec root plus the layout above. Cheap to create and picklable (sent to Dask workers)."""

    root: str = "./anodet-data"
    storage_options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self._fs: fsspec.AbstractFileSystem | None = None
        self._base: str = ""

    # -- plumbing
    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem of the root, opened (with ``storage_options``) on first use."""
        if self._fs is None:
            self._fs, self._base = fsspec.core.url_to_fs(self.root, **(self.storage_options or {}))
        return self._fs

    @property
    def base(self) -> str:
        """The root as a path on :attr:`fs` (protocol stripped)."""
        _ = self.fs
        return self._base

    @property
    def is_local(self) -> bool:
        """Whether the root is on the local filesystem."""
        return "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.root = state["root"]
        self.storage_options = state["storage_options"]
        self.__post_init__()

    def path(self, rel: str) -> str:
        """Filesystem path (protocol stripped) of a path relative to the root; absolute URLs pass through."""
        if "://" in rel:
            return fsspec.core.strip_protocol(rel)
        return posixpath.join(self.base, rel)

    def url(self, rel: str) -> str:
        """Full URL of a relative path (what users and other tools can open)."""
        if "://" in rel:
            return rel
        return self.fs.unstrip_protocol(self.path(rel)) if not self.is_local else self.path(rel)

    def exists(self, rel: str) -> bool:
        """Whether a relative path (or absolute URL) exists."""
        return self.fs.exists(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        """Contents of a file; FileNotFoundError when missing."""
        return self.fs.cat_file(self.path(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a file, creating its folders; an existing file is replaced."""
        p = self.path(rel)
        self.fs.makedirs(posixpath.dirname(p), exist_ok=True)
        with self.fs.open(p, "wb") as fh:
            fh.write(data)

    def read_text(self, rel: str) -> str:
        """Contents of a file decoded as UTF-8."""
        return self.read_bytes(rel).decode()

    def write_text(self, rel: str, text: str) -> None:
        """Write ``text`` UTF-8 encoded (see :meth:`write_bytes`)."""
        self.write_bytes(rel, text.encode())

    def ls(self, rel: str) -> list[str]:
        """Names directly under a relative folder ([] when missing)."""
        p = self.path(rel)
        if not self.fs.exists(p):
            return []
        return sorted(posixpath.basename(x.rstrip("/")) for x in self.fs.ls(p, detail=False))

    def write_table(self, rel: str, table: pa.Table) -> None:
        """Write a table as one zstd-compressed Parquet file, creating its folders."""
        p = self.path(rel)
        self.fs.makedirs(posixpath.dirname(p), exist_ok=True)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        with self.fs.open(p, "wb") as fh:
            fh.write(buf.getvalue())

    def read_table(self, rel: str, schema: pa.Schema | None = None) -> pa.Table:
        """Read a Parquet file; with ``schema``, select and cast to exactly its columns (a missing one is an error)."""
        with self.fs.open(self.path(rel), "rb") as fh:
            table = pq.read_table(fh)
        return table.select(schema.names).cast(schema) if schema is not None else table

    # -- captures and manifests
    @staticmethod
    def capture_rel(depot: str, night: str, capture_id: str, ext: str = "jpg") -> str:
        """Relative path of a capture image; ValueError for an invalid name or night."""
        return f"captures/{check_name(depot, 'depot')}/{check_night(night)}/{check_name(capture_id, 'capture_id')}.{ext}"

    @staticmethod
    def manifest_rel(depot: str, night: str) -> str:
        """Relative path of a night's manifest; ValueError for an invalid name or night."""
        return f"manifests/{check_name(depot, 'depot')}/{check_night(night)}.parquet"

    def write_manifest(self, depot: str, night: str, rows: Iterable[dict[str, Any]]) -> pa.Table:
        """Write (replace) a night's manifest from rows of :data:`MANIFEST_SCHEMA`; returns the table written."""
        table = table_from_rows(rows, MANIFEST_SCHEMA)
        self.write_table(self.manifest_rel(depot, night), table)
        return table

    def read_manifest(self, depot: str, night: str) -> pd.DataFrame:
        """A night's manifest as a DataFrame of :data:`MANIFEST_SCHEMA`; FileNotFoundError when there is none."""
        rel = self.manifest_rel(depot, night)
        if not self.exists(rel):
            raise FileNotFoundError(f"no manifest for depot {depot!r} night {night}: {self.url(rel)}")
        return self.read_table(rel, MANIFEST_SCHEMA).to_pandas()

    def depots(self) -> list[str]:
        """Depots that have a manifest folder, sorted."""
        return self.ls("manifests")

    def nights(self, depot: str) -> list[str]:
        """Nights (``YYYY-MM-DD``) of a depot that have a manifest, oldest first."""
        return sorted(n.removesuffix(".parquet") for n in self.ls(f"manifests/{check_name(depot, 'depot')}") if n.endswith(".parquet"))

    # -- references and labels
    @staticmethod
    def reference_rel(train_id: str, car: int, region_id: str, ext: str = "jpg") -> str:
        """Relative path of the pinned reference image of a region; ValueError for an invalid name."""
        return f"references/{check_name(train_id, 'train_id')}/{int(car)}/{check_name(region_id, 'region_id')}.{ext}"

    @staticmethod
    def labels_rel(depot: str, night: str) -> str:
        """Relative path of a night's labels table; ValueError for an invalid name or night."""
        return f"labels/{check_name(depot, 'depot')}/{check_night(night)}/labels.parquet"

    @staticmethod
    def mask_rel(depot: str, night: str, capture_id: str) -> str:
        """Relative path of a capture's label mask PNG; ValueError for an invalid name or night."""
        return f"labels/{check_name(depot, 'depot')}/{check_night(night)}/{check_name(capture_id, 'capture_id')}.png"

    def write_labels(self, depot: str, night: str, rows: Iterable[dict[str, Any]]) -> pa.Table:
        """Write (replace) a night's labels from rows of :data:`LABELS_SCHEMA`; returns the table written."""
        table = table_from_rows(rows, LABELS_SCHEMA)
        self.write_table(self.labels_rel(depot, night), table)
        return table

    def read_labels(self, depot: str, night: str) -> pd.DataFrame:
        """A night's labels as a DataFrame of :data:`LABELS_SCHEMA`; empty (with those columns) when unlabelled."""
        rel = self.labels_rel(depot, night)
        if not self.exists(rel):
            return pd.DataFrame({n: pd.Series(dtype="object") for n in LABELS_SCHEMA.names})
        return self.read_table(rel, LABELS_SCHEMA).to_pandas()

    # -- maps
    @staticmethod
    def maps_rel(depot: str, night: str) -> str:
        """Relative path of a night's Zarr group of anomaly maps; ValueError for an invalid name or night."""
        return f"maps/{check_name(depot, 'depot')}/{check_night(night)}.zarr"

    # -- reports
    @staticmethod
    def report_partition_rel(table: str, depot: str, night: str) -> str:
        """Relative folder of the (depot, night) partition of a report table; ValueError for an unknown table."""
        if table not in REPORT_SCHEMAS:
            raise ValueError(f"unknown report table {table!r}; expected one of {sorted(REPORT_SCHEMAS)}")
        return f"reports/{table}/depot={check_name(depot, 'depot')}/night={check_night(night)}"

    def write_report(self, table: str, depot: str, night: str, rows: Iterable[dict[str, Any]] | pa.Table) -> str:
        """Replace the (depot, night) partition of a report table; re-running a night overwrites, never appends."""
        part = self.report_partition_rel(table, depot, night)  # ValueError for an unknown table
        schema = REPORT_SCHEMAS[table]
        data = rows if isinstance(rows, pa.Table) else table_from_rows(rows, schema)
        data = data.select(schema.names).cast(schema)
        tmp = f"{part}/.part-0.parquet.tmp"
        self.write_table(tmp, data)
        # drop older files of the partition, then move the new one in place: readers never see two copies
        for name in self.ls(part):
            if name.endswith(".parquet"):
                self.fs.rm(self.path(f"{part}/{name}"))
        self.fs.mv(self.path(tmp), self.path(f"{part}/part-0.parquet"))
        return self.url(f"{part}/part-0.parquet")

    def report_dataset(self, table: str) -> pads.Dataset | None:
        """The whole report table as a hive-partitioned pyarrow dataset (None when nothing was written)."""
        if table not in REPORT_SCHEMAS:
            raise ValueError(f"unknown report table {table!r}; expected one of {sorted(REPORT_SCHEMAS)}")
        rel = f"reports/{table}"
        if not self.exists(rel):
            return None
        schema = pa.unify_schemas([REPORT_SCHEMAS[table], PARTITION_SCHEMA])
        return pads.dataset(
            self.path(rel),
            filesystem=self.fs,
            format="parquet",
            schema=schema,
            partitioning=pads.partitioning(PARTITION_SCHEMA, flavor="hive"),
            exclude_invalid_files=False,
            ignore_prefixes=[".", "_"],
        )

    def read_report(self, table: str, filter: Any = None) -> pd.DataFrame:  # noqa: A002 (pyarrow's word)
        """A report table with ``depot`` and ``night`` columns, rows kept by ``filter`` (a pyarrow expression) if given.

        Empty, with the table's columns, when nothing was written; ValueError for an unknown table.
        """
        ds = self.report_dataset(table)
        schema = pa.unify_schemas([REPORT_SCHEMAS[table], PARTITION_SCHEMA])
        if ds is None:
            return schema.empty_table().to_pandas()
        return ds.to_table(filter=filter).to_pandas()

    # -- models
    @staticmethod
    def model_version_rel(name: str, version: str) -> str:
        """Relative folder of a model version; ValueError for an invalid name or version."""
        return f"models/{check_name(name, 'model name')}/versions/{check_name(version, 'model version')}"

    @staticmethod
    def model_alias_rel(name: str, alias: str) -> str:
        """Relative path of a model alias file; ValueError for an invalid name or alias."""
        return f"models/{check_name(name, 'model name')}/aliases/{check_name(alias, 'alias')}"
