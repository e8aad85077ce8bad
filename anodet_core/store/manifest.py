"""A night's manifest checked against :data:`~anodet_core.store.schemas.MANIFEST_SCHEMA`, in one place.

Structural faults (a column missing, repeated, or of a type with no cast) stop the night with
:class:`ManifestError`, naming the manifest and the column; row faults (a null, a value that cannot be cast, a
hostile id, an unsafe uri, a repeated capture_id) cost only their row, reported ``invalid_manifest``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from .names import check_name, check_uri
from .schemas import MANIFEST_SCHEMA

_REQUIRED = ("capture_id", "train_id", "car", "region_id", "captured_at", "uri", "width", "height")
_NAMES = frozenset({"capture_id", "train_id", "region_id"})  # they become path segments
_POSITIVE = frozenset({"car", "width", "height"})  # car is a path segment; width and height size the map slot


class ManifestError(ValueError):
    """A manifest that cannot be planned at all (unreadable, a column missing or of a type that cannot be cast);
    the message names the manifest file and the column."""


@dataclass(frozen=True)
class CheckedManifest:
    """A night's manifest read against :data:`MANIFEST_SCHEMA`, with what is wrong with each row."""

    rows: pd.DataFrame  # MANIFEST_SCHEMA's columns, in manifest order; values that cannot be read are null
    invalid: list[str | None]  # per row: why it cannot be planned ("<field> ...; ..."), None for a valid row


def cast_manifest(table: pa.Table, where: str) -> tuple[pa.Table, list[dict[str, str]]]:
    """``table`` cast to MANIFEST_SCHEMA and, per row, field -> why its value could not be cast (then null).

    ManifestError for a missing or repeated column and for a column of a type with no cast to the schema's.
    """
    problems: list[dict[str, str]] = [{} for _ in range(table.num_rows)]
    columns = []
    for field in MANIFEST_SCHEMA:
        found = len(table.schema.get_all_field_indices(field.name))
        if found != 1:
            raise ManifestError(f"manifest {where}: column {field.name!r} is {'missing' if not found else 'repeated'}")
        col = table.column(field.name)
        try:
            columns.append(col.cast(field.type).combine_chunks())
        except (pa.ArrowNotImplementedError, pa.ArrowTypeError):
            raise ManifestError(f"manifest {where}: column {field.name!r} is {col.type}, which cannot be read as "
                                f"{field.type}") from None
        except pa.ArrowInvalid:  # only some values do not fit: their rows are invalid, the others are read
            values = []
            for i in range(len(col)):
                try:
                    values.append(col.slice(i, 1).cast(field.type).combine_chunks())
                except pa.ArrowInvalid:
                    problems[i][field.name] = f"{field.name} {col[i].as_py()!r} cannot be read as {field.type}"
                    values.append(pa.nulls(1, field.type))
            columns.append(pa.concat_arrays(values))
    return pa.Table.from_arrays(columns, schema=MANIFEST_SCHEMA), problems


def row_problems(rows: pd.DataFrame, cast: list[dict[str, str]], allowed_uri_prefixes: Sequence[str]) -> list[str | None]:
    """Per manifest row, why it cannot be planned (None: it can): a value that could not be cast, a null in a
    required field, an id that fails :func:`check_name`, a non-positive car or size, an unsafe uri
    (:func:`check_uri`), a capture_id that an earlier row has (the first one stays valid)."""
    seen: dict[str, int] = {}
    out: list[str | None] = []
    for i, row in enumerate(rows.to_dict("records")):
        problems = list(cast[i].values())
        for name in (n for n in _REQUIRED if n not in cast[i]):
            value = row[name]
            try:
                if pd.isna(value):
                    problems.append(f"{name} is null")
                elif name in _NAMES:
                    check_name(value, name)
                elif name in _POSITIVE and value <= 0:
                    problems.append(f"{name} {int(value)} is not positive")
                elif name == "uri":
                    check_uri(value, allowed_uri_prefixes)
            except ValueError as exc:
                problems.append(str(exc))
        cid = row["capture_id"]
        if isinstance(cid, str):
            if cid in seen:
                problems.append(f"capture_id {cid!r} repeats manifest row {seen[cid]}")
            else:
                seen[cid] = i
        out.append("; ".join(problems) or None)
    return out


def check_table(table: pa.Table, where: str, allowed_uri_prefixes: Sequence[str] = ()) -> CheckedManifest:
    """A manifest table (read from ``where``, named in errors) checked: structural faults raise
    :class:`ManifestError`, row faults are in :attr:`CheckedManifest.invalid`."""
    table, cast = cast_manifest(table, where)
    rows = table.to_pandas()
    return CheckedManifest(rows, row_problems(rows, cast, allowed_uri_prefixes))
