"""History resolution: which earlier image each capture is compared with.

The history of a capture is the most recent earlier capture (strictly earlier ``captured_at``) of the same
(train_id, car, region_id) whose report says status ``ok`` and that is known to be normal, taken from the reports
of every depot and night except the night being processed (so re-running a night is deterministic). Known normal:
labelled normal (``labels/``: an analyst's verdict, which overrides the model), or unlabelled and decided
``normal``. So a confirmed false alarm becomes a valid history, and a confirmed anomaly the model missed does not
(compared with it, the next night's repaired part would look like a change). Failing that, the pinned reference
image of the region (``references/<train>/<car>/<region>.jpg``). Failing that, no history: the capture is still
reported, with status ``no_history``.

Invalid manifest rows (:meth:`anodet_core.store.layout.Store.check_manifest`) get no history and are never
matched. Earlier captures and references are history only when their uri passes the same check as a manifest's
(:func:`anodet_core.store.names.check_uri`); the others are skipped, with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow.compute as pc

from ..store.layout import Store
from ..store.names import check_name, check_uri
from ..store.schemas import DECISION_NORMAL, STATUS_OK
from ..text import printable

log = logging.getLogger(__name__)
KEYS = ["train_id", "car", "region_id"]


@dataclass
class PairJob:
    """One capture of the night with its resolved history: the unit of work sent to the workers."""

    index: int  # row of the capture in the night's map array
    capture: dict[str, Any]  # manifest row
    history_source: str | None  # "capture" | "reference" | None
    history_capture_id: str | None
    history_uri: str | None  # relative to the store root, or an absolute URL
    # why the manifest row cannot be planned: its report status is invalid_manifest with this as the error, and its
    # map slot (index) stays unwritten; None for a valid row
    invalid: str | None = None


def _confined(uri: Any, allowed_uri_prefixes: Sequence[str]) -> bool:
    try:
        check_uri(uri, allowed_uri_prefixes)
    except ValueError:
        return False
    return True


def _normal_history(store: Store, depot: str, night: str, allowed_uri_prefixes: Sequence[str]) -> pd.DataFrame:
    """Earlier captures known to be normal (other nights' reports; labels override decisions) with every key and a
    uri confined to the store."""
    ds = store.report_dataset("captures")
    cols = ["capture_id", "uri", "captured_at", *KEYS]
    if ds is None:
        return pd.DataFrame(columns=cols)
    flt = (pc.field("status") == STATUS_OK) & ~((pc.field("depot") == depot) & (pc.field("night") == night))
    hist = ds.to_table(columns=[*cols, "decision"], filter=flt).to_pandas().dropna(subset=cols)
    labels = store.all_labels()
    verdict = labels.dropna(subset=["anomalous"]).drop_duplicates("capture_id", keep="last").set_index("capture_id")
    labelled = hist["capture_id"].map(verdict["anomalous"])  # True / False, NaN when unlabelled
    normal = labelled.eq(False) | (labelled.isna() & hist["decision"].eq(DECISION_NORMAL))
    hist = hist[normal.astype(bool)][cols]
    confined = hist["uri"].map(lambda u: _confined(u, allowed_uri_prefixes)).astype(bool)
    if not confined.all():
        log.warning("%d earlier captures are no history: their report uri is not confined to the store (first: %s)",
                    int((~confined).sum()), printable(hist["uri"][~confined].iloc[0]))
    return hist[confined]


def _references(store: Store, allowed_uri_prefixes: Sequence[str]) -> dict[tuple[str, int, str], str]:
    """All pinned references, listed once (one LIST on object storage, not one HEAD per region)."""
    base = store.path("references")
    if not store.fs.exists(base):
        return {}
    found: dict[tuple[str, int, str], str] = {}
    for path in store.fs.find(base):
        rel = path[len(store.base) :].lstrip("/") if path.startswith(store.base) else path
        parts = rel.split("/")
        if len(parts) != 4 or not parts[2].isdigit():
            continue
        region = parts[3].rsplit(".", 1)[0]
        try:
            check_name(parts[1], "train_id")
            check_name(region, "region_id")
            check_uri(rel, allowed_uri_prefixes)
        except ValueError as exc:
            log.warning("reference %s skipped: %s", printable(rel), exc)
            continue
        found.setdefault((parts[1], int(parts[2]), region), rel)
    return found


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """A manifest row with its nulls (NaN, NaT) as None: an invalid row's values go into its report row as they are."""
    return {k: None if pd.isna(v) else v for k, v in row.items()}


def resolve_histories(store: Store, manifest: pd.DataFrame, depot: str, night: str,
                      invalid: Sequence[str | None] | None = None, *,
                      allowed_uri_prefixes: Sequence[str] = ()) -> list[PairJob]:
    """Pair every manifest row (in manifest order) with its history; see the module docstring for the rule.

    ``invalid`` (:attr:`anodet_core.store.manifest.CheckedManifest.invalid`, one entry per row) marks the rows that
    get no history: their jobs carry the reason (:attr:`PairJob.invalid`). Histories' uris are checked with
    ``allowed_uri_prefixes`` (ANODET_ALLOWED_URI_PREFIXES), as the manifest's were.
    """
    if manifest.empty:
        return []
    cur = manifest.reset_index(drop=True).copy()
    bad = list(invalid) if invalid is not None else [None] * len(cur)
    if len(bad) != len(cur):
        raise ValueError(f"invalid has {len(bad)} entries for {len(cur)} manifest rows")
    cur["job_index"] = range(len(cur))
    valid = cur[[b is None for b in bad]]
    hist = _normal_history(store, depot, night, allowed_uri_prefixes)
    matched: dict[int, tuple[str, str]] = {}
    if not hist.empty and not valid.empty:
        left = valid[["job_index", "captured_at", *KEYS]].sort_values("captured_at")
        right = hist.rename(columns={"capture_id": "h_id", "uri": "h_uri", "captured_at": "h_at"})
        right = right.sort_values("h_at")
        right["captured_at"] = right["h_at"]
        left["car"] = left["car"].astype("int64")
        right["car"] = right["car"].astype("int64")
        m = pd.merge_asof(left, right, on="captured_at", by=KEYS, allow_exact_matches=False, direction="backward")
        for row in m.dropna(subset=["h_id"]).itertuples():
            matched[int(row.job_index)] = (row.h_id, row.h_uri)
    refs = _references(store, allowed_uri_prefixes) if len(matched) < len(valid) else {}
    jobs: list[PairJob] = []
    for row in cur.to_dict("records"):
        i = int(row.pop("job_index"))
        if bad[i] is not None:
            jobs.append(PairJob(index=i, capture=_plain(row), history_source=None, history_capture_id=None,
                                history_uri=None, invalid=bad[i]))
            continue
        src: str | None
        hid: str | None
        huri: str | None
        if i in matched:
            src, hid, huri = "capture", *matched[i]
        else:
            ref = refs.get((row["train_id"], int(row["car"]), row["region_id"]))
            src, hid, huri = ("reference", None, ref) if ref else (None, None, None)
        jobs.append(PairJob(index=i, capture=row, history_source=src, history_capture_id=hid, history_uri=huri))
    return jobs
