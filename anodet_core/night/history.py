"""History resolution: which earlier image each capture is compared with.

The history of a capture is the most recent earlier capture (strictly earlier ``captured_at``) of the same
(train_id, car, region_id) whose report says status ``ok`` and decision ``normal``, taken from the reports of
every depot and night except the night being processed (so re-running a night is deterministic). Failing
that, the pinned reference image of the region (``references/<train>/<car>/<region>.jpg``). Failing that, no
history: the capture is still reported, with status ``no_history``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow.compute as pc

from ..store.layout import Store
from ..store.schemas import DECISION_NORMAL, STATUS_OK

KEYS = ["train_id", "car", "region_id"]


@dataclass
class PairJob:
    """One capture of the night with its resolved history: the unit of work sent to the workers."""

    index: int  # row of the capture in the night's map array
    capture: dict[str, Any]  # manifest row
    history_source: str | None  # "capture" | "reference" | None
    history_capture_id: str | None
    history_uri: str | None  # relative to the store root, or an absolute URL


def _normal_history(store: Store, depot: str, night: str) -> pd.DataFrame:
    ds = store.report_dataset("captures")
    cols = ["capture_id", "uri", "captured_at", *KEYS]
    if ds is None:
        return pd.DataFrame(columns=cols)
    flt = (pc.field("status") == STATUS_OK) & (pc.field("decision") == DECISION_NORMAL)
    flt &= ~((pc.field("depot") == depot) & (pc.field("night") == night))
    return ds.to_table(columns=cols, filter=flt).to_pandas()


def _references(store: Store) -> dict[tuple[str, int, str], str]:
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
        found.setdefault((parts[1], int(parts[2]), region), rel)
    return found


def resolve_histories(store: Store, manifest: pd.DataFrame, depot: str, night: str) -> list[PairJob]:
    """Pair every manifest row (in manifest order) with its history; see the module docstring for the rule."""
    if manifest.empty:
        return []
    cur = manifest.reset_index(drop=True).copy()
    cur["job_index"] = range(len(cur))
    hist = _normal_history(store, depot, night)
    matched: dict[int, tuple[str, str]] = {}
    if not hist.empty:
        left = cur[["job_index", "captured_at", *KEYS]].sort_values("captured_at")
        right = hist.rename(columns={"capture_id": "h_id", "uri": "h_uri", "captured_at": "h_at"})
        right = right.sort_values("h_at")
        right["captured_at"] = right["h_at"]
        left["car"] = left["car"].astype("int64")
        right["car"] = right["car"].astype("int64")
        m = pd.merge_asof(left, right, on="captured_at", by=KEYS, allow_exact_matches=False, direction="backward")
        for row in m.dropna(subset=["h_id"]).itertuples():
            matched[int(row.job_index)] = (row.h_id, row.h_uri)
    refs = _references(store) if len(matched) < len(cur) else {}
    jobs: list[PairJob] = []
    for row in cur.to_dict("records"):
        i = int(row.pop("job_index"))
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
