"""Atomic nights: a run writes a new generation where no reader looks, then publishes it in one step.

A (re)run of a night gets a fresh *generation* (:func:`new_generation`, sortable by time). Its maps go to their
own Zarr group (``maps/<depot>/<night>/<generation>.zarr``) and its report files to
``reports/<table>/depot=<depot>/night=<night>/part-<generation>.parquet``, next to the previous run's, which
stay untouched. The one step that makes the new night visible is the write of its *commit*
(``reports/_nights/depot=<depot>/night=<night>.json``, one small object: atomic on a local disk by rename and
on an object store by a single PUT), which names the generation's report files and map group. Readers that go
through the store (:meth:`Store.read_report`, :meth:`Store.report_dataset`, ``anodet query``, history
resolution, :func:`anodet_core.store.maps.open_night_maps`) read exactly the committed files, so a crash at any
point before the commit, kill -9 included, leaves the previous complete night as it was, report rows and map
slots in agreement. After the commit the older generations are deleted (and a later publish deletes whatever a
crash left behind). A reader that lists the partition folders itself sees one file per partition except in
the moment between a commit and that clean-up.

Nights written before commits existed (``part-0.parquet``, ``maps/<depot>/<night>.zarr``) are read as they are
until they are re-run.
"""

from __future__ import annotations

import datetime as dt
import json
import posixpath
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import pyarrow as pa

from .schemas import REPORT_SCHEMAS

if TYPE_CHECKING:
    from .layout import Store


def new_generation() -> str:
    """A fresh generation name: UTC time to the microsecond plus a random suffix (sorts by creation time)."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)


@dataclass
class NightCommit:
    """What a published night is made of: its generation, map group and one report file per table."""

    depot: str
    night: str
    generation: str
    maps: str | None  # store-relative Zarr group; None when the night has no map group (report-only writes)
    files: dict[str, str] = field(default_factory=dict)  # report table -> store-relative Parquet file
    run_id: str = ""
    committed_at: str = ""

    def to_json(self) -> str:
        """The commit as JSON (what is stored)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> NightCommit:
        """Parse a stored commit; ValueError when it is not one."""
        try:
            data = json.loads(text)
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not a night commit: {exc}") from exc


def read_commit(store: Store, depot: str, night: str) -> NightCommit | None:
    """The night's commit, or None for a night never published with one (or never run)."""
    rel = store.commit_rel(depot, night)
    try:
        return NightCommit.from_json(store.read_bytes(rel))
    except FileNotFoundError:
        return None


def all_commits(store: Store) -> dict[tuple[str, str], NightCommit]:
    """Every night's commit, keyed by (depot, night): one listing and one batched read."""
    base = store.path(store.COMMITS_REL)
    if not store.fs.exists(base):
        return {}
    paths = [p for p in store.fs.find(base) if p.endswith(".json")]
    out: dict[tuple[str, str], NightCommit] = {}
    for raw in store.fs.cat(paths).values() if paths else []:
        c = NightCommit.from_json(raw)
        out[(c.depot, c.night)] = c
    return out


def publish_night(
    store: Store,
    depot: str,
    night: str,
    tables: dict[str, pa.Table],
    *,
    generation: str | None = None,
    maps_rel: str | None = None,
    run_id: str = "",
) -> NightCommit:
    """Write ``tables`` (report table -> rows of its schema) as a new generation of the night and publish it.

    Tables not given keep their committed file, and the map group stays the committed one unless ``maps_rel``
    names the generation's. Order: report files (each written under a temporary name, then renamed), then the
    commit, then the clean-up of everything the commit no longer names.
    """
    for table in tables:
        if table not in REPORT_SCHEMAS:
            raise ValueError(f"unknown report table {table!r}; expected one of {sorted(REPORT_SCHEMAS)}")
    generation = generation or new_generation()
    previous = read_commit(store, depot, night)
    files = dict(previous.files) if previous else {}
    if previous is None:  # a night from before commits: its legacy files stay what readers see
        for table in REPORT_SCHEMAS:
            legacy = f"{store.report_partition_rel(table, depot, night)}/part-0.parquet"
            if table not in tables and store.exists(legacy):
                files[table] = legacy
    for table, data in tables.items():
        rel = store.report_part_rel(table, depot, night, generation)
        _write_then_rename(store, rel, partial(store.write_table, table=data))
        files[table] = rel
    maps = maps_rel if maps_rel is not None else (previous.maps if previous else _legacy_maps(store, depot, night))
    commit = NightCommit(depot, night, generation, maps, files, run_id, dt.datetime.now(dt.UTC).isoformat())
    _write_then_rename(store, store.commit_rel(depot, night), lambda p: store.write_text(p, commit.to_json()))
    clean_night(store, commit)
    return commit


def clean_night(store: Store, commit: NightCommit) -> list[str]:
    """Delete the night's report files and map groups that ``commit`` does not name; returns what was deleted."""
    keep = {store.path(rel) for rel in commit.files.values()}
    gone: list[str] = []
    for table in REPORT_SCHEMAS:
        part = store.path(store.report_partition_rel(table, commit.depot, commit.night))
        if not store.fs.exists(part):
            continue
        for p in store.fs.ls(part, detail=False):
            name = posixpath.basename(p.rstrip("/"))
            if (name.endswith(".parquet") or name.endswith(".tmp")) and p not in keep:
                store.fs.rm(p)
                gone.append(p)
    commits = store.path(posixpath.dirname(store.commit_rel(commit.depot, commit.night)))
    own = posixpath.basename(store.commit_rel(commit.depot, commit.night))
    for p in store.fs.ls(commits, detail=False) if store.fs.exists(commits) else []:
        if posixpath.basename(p).startswith(f".{own}.") and p.endswith(".tmp"):  # a commit a crash left half-written
            store.fs.rm(p)
            gone.append(p)
    keep_maps = store.path(commit.maps) if commit.maps else None
    folder = store.path(store.maps_generations_rel(commit.depot, commit.night))
    candidates = [store.path(store.maps_rel(commit.depot, commit.night))]  # the legacy group
    if store.fs.exists(folder):
        candidates += list(store.fs.ls(folder, detail=False))
    for p in candidates:
        p = p.rstrip("/")
        if p != keep_maps and store.fs.exists(p):
            store.fs.rm(p, recursive=True)
            gone.append(p)
    return gone


def committed_maps_rel(store: Store, depot: str, night: str) -> str:
    """The store-relative map group readers see for a night: the committed one, else the legacy path."""
    c = read_commit(store, depot, night)
    return c.maps if c is not None and c.maps else store.maps_rel(depot, night)


def latest_maps_rel(store: Store, depot: str, night: str) -> str:
    """The newest map group of a night, committed or not (the one a run in progress writes), else the legacy path."""
    folder = store.path(store.maps_generations_rel(depot, night))
    if store.fs.exists(folder):
        gens = sorted(posixpath.basename(p.rstrip("/")) for p in store.fs.ls(folder, detail=False))
        gens = [g for g in gens if g.endswith(".zarr")]
        if gens:
            return f"{store.maps_generations_rel(depot, night)}/{gens[-1]}"
    return store.maps_rel(depot, night)


def _legacy_maps(store: Store, depot: str, night: str) -> str | None:
    rel = store.maps_rel(depot, night)
    return rel if store.exists(rel) else None


def _write_then_rename(store: Store, rel: str, write: Callable[[str], None]) -> None:
    """Write ``rel`` under a hidden temporary name, then rename it: no reader ever sees a partial file."""
    folder, name = posixpath.split(rel)
    tmp = f"{folder}/.{name}.{secrets.token_hex(3)}.tmp"
    write(tmp)
    store.fs.mv(store.path(tmp), store.path(rel))
