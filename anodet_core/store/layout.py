"""The store: where everything lives under one fsspec root.

This module is the single owner of paths; nothing else builds store paths by hand. The schemas of every table
(and the report row types) are :mod:`anodet_core.store.schemas`.

Layout under the root (``ANODET_STORE``: a local folder, ``file://``, ``s3://bucket/prefix``, ...)::

    captures/<depot>/<night>/<capture_id>.jpg          images left by the robot
    manifests/<depot>/<night>.parquet                   one row per capture (MANIFEST_SCHEMA)
    manifests/<depot>/_bench.json                       marks a depot of generated bench data (anodet bench): not
                                                        served beside a store's real depots unless listed
    references/<train_id>/<car>/<region_id>.jpg         pinned good image of a region (history of last resort)
    labels/<depot>/<night>/labels.parquet               ground truth per capture (LABELS_SCHEMA)
    labels/<depot>/<night>/<capture_id>.png             pixel mask, white = anomaly, capture's native size
    labels/<depot>/<night>/verdicts/<stamp>-<capture_id>.parquet (+ .png)   an analyst's verdict (VerdictRow), append-only
    maps/<depot>/<night>/<generation>.zarr              Zarr v3 group: anomaly maps of one run (anodet_core.store.maps)
    reports/captures/depot=<depot>/night=<night>/part-<generation>.parquet   one row per capture (CaptureRow)
    reports/findings/depot=<depot>/night=<night>/part-<generation>.parquet   one row per finding (FindingRow)
    reports/_nights/depot=<depot>/night=<night>.json    the night's commit: the generation readers see
    models/<name>/versions/<version>/weights.safetensors + card.json   immutable model versions
    models/<name>/versions/<version>/exports/<key>/...  exported graphs of a version (anodet export): onnx,
                                                        openvino, openvino-int8; recorded in the card
    pages/<depot>/<night>/night.html (+ its plots, *.png)   the night's HTML report (anodet_core.reporting), after publishing
    models/<name>/aliases/<alias>                       text file holding a version (e.g. "production")

Nights are ``YYYY-MM-DD`` strings. Report partitions are hive-style so pyarrow, pandas, DuckDB and Spark read
them as tables with ``depot`` and ``night`` columns; those two columns live in the path, not in the files. How
a run's generation is published in one step: :mod:`anodet_core.store.publish`.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from ..text import printable
from . import s3
from .manifest import CheckedManifest, ManifestError, check_table
from .names import check_name, check_night
from .schemas import (
    LABELS_SCHEMA,
    MANIFEST_SCHEMA,
    PARTITION_SCHEMA,
    REPORT_SCHEMAS,
    VERDICT_SCHEMA,
    Verdict,
    VerdictRow,
    table_from_rows,
)

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
        """The fsspec filesystem of the root, opened on first use: ``storage_options`` over the S3 retry defaults
        (:mod:`anodet_core.store.s3`); :class:`~anodet_core.store.s3.BucketNotFound` when an S3 root's bucket is missing."""
        if self._fs is None:
            fs, base = fsspec.core.url_to_fs(self.root, **s3.fs_options(self.root, self.storage_options))
            s3.configure(fs)
            s3.check_bucket(fs, base, self.root)
            self._fs, self._base = fs, base
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
        """Filesystem path (protocol stripped) of a path relative to the root; absolute URLs pass through.

        A path must stay in the store, PermissionError ("... leaves the store") otherwise: no '..' segment, no NUL;
        an absolute path (what :meth:`url` gives on a local store) only under the root; on a local store, its real
        path (symlinks resolved) under the root's. URLs are the caller's to confine (:func:`check_uri`).
        """
        if "://" in rel:
            return fsspec.core.strip_protocol(rel)
        if ".." in rel.split("/") or "\x00" in rel:
            raise PermissionError(f"store path {rel!r} leaves the store")
        absolute = rel.startswith("/")
        p = rel if absolute else posixpath.join(self.base, rel)
        if self.is_local:
            root = os.path.realpath(self.base)
            if os.path.commonpath([root, os.path.realpath(p)]) != root:
                raise PermissionError(f"store path {rel!r} leaves the store {printable(self.root)} (a link or an absolute path)")
        elif absolute and not p.startswith(self.base.rstrip("/") + "/"):
            raise PermissionError(f"store path {rel!r} leaves the store {printable(self.root)}")
        return p

    def url(self, rel: str) -> str:
        """Full URL of a relative path (what users and other tools can open)."""
        if "://" in rel:
            return rel
        return self.fs.unstrip_protocol(self.path(rel)) if not self.is_local else self.path(rel)

    def exists(self, rel: str) -> bool:
        """Whether a relative path (or absolute URL) exists; PermissionError for one that leaves the store (:meth:`path`)."""
        return self.fs.exists(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        """Contents of a file; FileNotFoundError when missing, PermissionError when it leaves the store (:meth:`path`)."""
        # S3: "not found", a missing bucket, an OSError after the retries, a broken-off body fetched again
        return s3.read(self.url(rel), lambda: self.fs.cat_file(self.path(rel)))

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
        """A night's manifest as a DataFrame of :data:`MANIFEST_SCHEMA` (:meth:`check_manifest`'s rows: a value that
        cannot be read as its column's type is null); FileNotFoundError when there is none, ManifestError when it
        cannot be read at all."""
        return self.check_manifest(depot, night).rows

    def check_manifest(self, depot: str, night: str, allowed_uri_prefixes: Sequence[str] = ()) -> CheckedManifest:
        """A night's manifest validated against :data:`MANIFEST_SCHEMA`, the one place manifests are checked.

        Structural faults stop here: FileNotFoundError when there is none, ManifestError (naming the manifest's
        URL, and the column) when it is unreadable, lacks or repeats a column, or has a column of a type that
        cannot be cast. Row faults do not: :attr:`CheckedManifest.invalid` says for each row what is wrong with
        it (see :func:`anodet_core.store.manifest.row_problems`; uris are checked with ``allowed_uri_prefixes``).
        """
        rel = self.manifest_rel(depot, night)
        where = self.url(rel)
        try:
            with self.fs.open(self.path(rel), "rb") as fh:
                table = pq.read_table(fh)
        except FileNotFoundError:
            raise FileNotFoundError(f"no manifest for depot {depot!r} night {night}: {where}") from None
        except (OSError, pa.ArrowException) as exc:
            raise ManifestError(f"manifest {where} is unreadable: {printable(exc)}") from exc
        return check_table(table, where, allowed_uri_prefixes)

    def depots(self) -> list[str]:
        """Depots that have a manifest folder, sorted."""
        return self.ls("manifests")

    @staticmethod
    def bench_marker_rel(depot: str) -> str:
        """Relative path of the marker of a bench depot (generated data, :meth:`mark_bench_depot`)."""
        return f"manifests/{check_name(depot, 'depot')}/_bench.json"

    def mark_bench_depot(self, depot: str, note: str) -> None:
        """Mark ``depot`` as generated bench data (``note``: what wrote it), so that scheduling can keep it apart."""
        self.write_text(self.bench_marker_rel(depot), json.dumps({"bench": True, "note": note}))

    def is_bench_depot(self, depot: str) -> bool:
        """Whether ``depot`` holds generated bench data (:meth:`mark_bench_depot`)."""
        return self.exists(self.bench_marker_rel(depot))

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
        """A night's labels as a DataFrame of :data:`LABELS_SCHEMA`, each capture's latest verdict (:meth:`add_verdict`)
        over the labels table; empty (with those columns) when neither exists."""
        rel = self.labels_rel(depot, night)
        labels = (self.read_table(rel, LABELS_SCHEMA).to_pandas() if self.exists(rel)
                  else pd.DataFrame({n: pd.Series(dtype="object") for n in LABELS_SCHEMA.names}))
        return _overlay(labels, self.read_verdicts(depot, night), ["capture_id"])

    def all_labels(self) -> pd.DataFrame:
        """Every night's labels in one frame (:data:`LABELS_SCHEMA` plus ``depot`` and ``night``, verdicts overlaid as
        in :meth:`read_labels`), read in one listing; empty, with those columns, when the store has none. A label
        (ground truth or an analyst's verdict) decides whether a capture may serve as history
        (:mod:`anodet_core.night.history`)."""
        cols = [*LABELS_SCHEMA.names, "depot", "night"]
        files = sorted(self.fs.glob(self.path("labels/*/*/labels.parquet")))
        if files:
            # labels/<depot>/<night>/: the report tables' partition columns, as plain directories
            ds = pads.dataset(files, filesystem=self.fs, format="parquet",
                              schema=pa.unify_schemas([LABELS_SCHEMA, PARTITION_SCHEMA]),
                              partitioning=pads.partitioning(PARTITION_SCHEMA), partition_base_dir=self.path("labels"))
            labels = ds.to_table(columns=cols).to_pandas()
        else:
            labels = pd.DataFrame({n: pd.Series(dtype="object") for n in cols})
        return _overlay(labels, self.read_verdicts(), ["depot", "night", "capture_id"])

    # -- verdicts
    @staticmethod
    def verdicts_rel(depot: str, night: str) -> str:
        """Relative folder of a night's verdicts."""
        return f"labels/{check_name(depot, 'depot')}/{check_night(night)}/verdicts"

    def add_verdict(self, depot: str, night: str, verdict: VerdictRow, mask_png: bytes | None = None) -> tuple[VerdictRow, str]:
        """Record a verdict as a new file (its mask PNG beside it, ``mask_uri`` set to it); returns the row as stored
        and the file's URL.

        Append-only: the name holds the verdict's UTC time to the microsecond and a random part, and an existing
        file is never replaced (FileExistsError), so every verdict ever given stays readable.
        """
        import uuid

        stamp = verdict.verdict_at.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        stem = f"{self.verdicts_rel(depot, night)}/{stamp}-{uuid.uuid4().hex[:8]}-{check_name(verdict.capture_id, 'capture_id')}"
        if self.exists(f"{stem}.parquet"):
            raise FileExistsError(f"verdict file {self.url(stem)}.parquet exists")
        if mask_png is not None:
            self.write_bytes(f"{stem}.png", mask_png)
            verdict = replace(verdict, mask_uri=f"{stem}.png")
        self.write_table(f"{stem}.parquet", table_from_rows([verdict], VERDICT_SCHEMA))  # last: the mask is there first
        return verdict, self.url(f"{stem}.parquet")

    def read_verdicts(self, depot: str | None = None, night: str | None = None) -> pd.DataFrame:
        """Verdicts (:data:`VERDICT_SCHEMA` plus ``depot`` and ``night``) of one night, or of all with no arguments,
        oldest first (a later one supersedes an earlier one on the same capture)."""
        cols = [*VERDICT_SCHEMA.names, "depot", "night"]
        pattern = (f"{self.verdicts_rel(depot, night)}/*.parquet" if depot is not None and night is not None
                   else "labels/*/*/verdicts/*.parquet")
        files = sorted(self.fs.glob(self.path(pattern)))
        if not files:
            return pd.DataFrame({n: pd.Series(dtype="object") for n in cols})
        frames = []
        for f in files:
            with self.fs.open(f, "rb") as fh:
                t = pq.read_table(fh).select(VERDICT_SCHEMA.names).cast(VERDICT_SCHEMA).to_pandas()
            d, n = posixpath.relpath(f, self.path("labels")).split("/")[:2]
            frames.append(t.assign(depot=d, night=n, _file=posixpath.basename(f)))
        out = pd.concat(frames, ignore_index=True).sort_values(["verdict_at", "_file"], kind="stable")
        return out.drop(columns="_file")[cols].reset_index(drop=True)

    # -- maps
    @staticmethod
    def maps_rel(depot: str, night: str, generation: str | None = None) -> str:
        """Relative path of a night's Zarr group of anomaly maps: of one generation of the night
        (:mod:`anodet_core.store.publish`), or without one the legacy path of nights written before generations."""
        if generation is None:
            return f"maps/{check_name(depot, 'depot')}/{check_night(night)}.zarr"
        return f"{Store.maps_generations_rel(depot, night)}/{check_name(generation, 'generation')}.zarr"

    @staticmethod
    def maps_generations_rel(depot: str, night: str) -> str:
        """Relative folder holding the map groups of a night's generations."""
        return f"maps/{check_name(depot, 'depot')}/{check_night(night)}"

    # -- reports
    @staticmethod
    def report_partition_rel(table: str, depot: str, night: str) -> str:
        """Relative folder of the (depot, night) partition of a report table; ValueError for an unknown table."""
        if table not in REPORT_SCHEMAS:
            raise ValueError(f"unknown report table {table!r}; expected one of {sorted(REPORT_SCHEMAS)}")
        return f"reports/{table}/depot={check_name(depot, 'depot')}/night={check_night(night)}"

    @staticmethod
    def report_part_rel(table: str, depot: str, night: str, generation: str) -> str:
        """Relative path of one generation's file in the (depot, night) partition of a report table."""
        return f"{Store.report_partition_rel(table, depot, night)}/part-{check_name(generation, 'generation')}.parquet"

    COMMITS_REL = "reports/_nights"  # "_": hive readers (pyarrow, Spark, DuckDB's hive_partitioning) skip it

    @staticmethod
    def commit_rel(depot: str, night: str) -> str:
        """Relative path of a night's commit (:mod:`anodet_core.store.publish`)."""
        return f"{Store.COMMITS_REL}/depot={check_name(depot, 'depot')}/night={check_night(night)}.json"

    def write_report(self, table: str, depot: str, night: str, rows: Iterable[object] | pa.Table) -> str:
        """Replace the (depot, night) partition of one report table, published atomically with the night's other
        table as committed (:func:`anodet_core.store.publish.publish_night`); returns the file's URL."""
        from .publish import publish_night

        if table not in REPORT_SCHEMAS:
            raise ValueError(f"unknown report table {table!r}; expected one of {sorted(REPORT_SCHEMAS)}")
        schema = REPORT_SCHEMAS[table]
        data = rows if isinstance(rows, pa.Table) else table_from_rows(rows, schema)
        commit = publish_night(self, depot, night, {table: data.select(schema.names).cast(schema)})
        return self.url(commit.files[table])

    def report_files(self, table: str) -> list[str]:
        """The Parquet files (filesystem paths) readers see for a report table: per night, the committed file; for
        nights written before commits, every visible ``*.parquet`` of the partition."""
        from .publish import all_commits

        base = self.path(f"reports/{table}")
        if not self.fs.exists(base):
            return []
        commits = all_commits(self)
        keep = {self.path(c.files[table]) for c in commits.values() if table in c.files}
        out = []
        for p in sorted(self.fs.find(base)):
            name = posixpath.basename(p)
            if not name.endswith(".parquet") or name.startswith((".", "_")):
                continue
            parts = dict(seg.split("=", 1) for seg in posixpath.dirname(p).split("/") if "=" in seg)
            if (parts.get("depot"), parts.get("night")) in commits:
                if p in keep:
                    out.append(p)
            else:
                out.append(p)
        return out

    def report_dataset(self, table: str) -> pads.Dataset | None:
        """The whole report table as a hive-partitioned pyarrow dataset of :meth:`report_files` (None when empty)."""
        if table not in REPORT_SCHEMAS:
            raise ValueError(f"unknown report table {table!r}; expected one of {sorted(REPORT_SCHEMAS)}")
        files = self.report_files(table)
        if not files:
            return None
        schema = pa.unify_schemas([REPORT_SCHEMAS[table], PARTITION_SCHEMA])
        return pads.dataset(
            files,
            filesystem=self.fs,
            format="parquet",
            schema=schema,
            partitioning=pads.partitioning(PARTITION_SCHEMA, flavor="hive"),
            partition_base_dir=self.path(f"reports/{table}"),
            exclude_invalid_files=False,
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

    # -- pages
    @staticmethod
    def page_rel(depot: str, night: str, name: str = "night.html") -> str:
        """Relative path of a night's HTML report, or of a file beside it (its plots)."""
        return f"pages/{check_name(depot, 'depot')}/{check_night(night)}/{check_name(name, 'page file')}"

    # -- models
    @staticmethod
    def model_version_rel(name: str, version: str) -> str:
        """Relative folder of a model version; ValueError for an invalid name or version."""
        return f"models/{check_name(name, 'model name')}/versions/{check_name(version, 'model version')}"

    @staticmethod
    def model_export_rel(name: str, version: str, key: str) -> str:
        """Relative folder of one export of a model version (``key``: onnx, openvino, openvino-int8)."""
        return f"{Store.model_version_rel(name, version)}/exports/{check_name(key, 'export')}"

    @staticmethod
    def model_alias_rel(name: str, alias: str) -> str:
        """Relative path of a model alias file; ValueError for an invalid name or alias."""
        return f"models/{check_name(name, 'model name')}/aliases/{check_name(alias, 'alias')}"


def _overlay(labels: pd.DataFrame, verdicts: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``labels`` with each capture's latest verdict in place of its row (or added): ``anomalous`` from the verdict,
    its ``anomaly_type`` and ``mask_uri``."""
    if verdicts.empty:
        return labels
    latest = verdicts.drop_duplicates(keys, keep="last").copy()
    latest["anomalous"] = latest["verdict"].eq(Verdict.ANOMALY)
    latest = latest[[*labels.columns]]
    kept = labels.merge(latest[keys], on=keys, how="left", indicator=True)
    kept = labels[(kept["_merge"] == "left_only").to_numpy()]
    return pd.concat([kept, latest], ignore_index=True) if not kept.empty else latest.reset_index(drop=True)
