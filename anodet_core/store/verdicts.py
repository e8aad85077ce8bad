"""Analysts' verdicts: checked, then recorded append-only under the store's labels area (``anodet label``).

A verdict names a capture by id; its depot and night come from the committed captures report (or are given). A
mask is an image file of the capture's native size, white = anomaly; it is stored re-encoded as a 0/255 PNG, so
every reader of masks (:func:`anodet_core.imaging.io.read_mask`) sees the same bytes whatever the analyst drew in.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
from PIL import Image

from ..imaging.io import read_mask
from ..text import printable
from .layout import Store
from .names import check_name, check_night
from .schemas import ANOMALY_TYPES, Verdict, VerdictRow


@dataclass(frozen=True)
class RecordedVerdict:
    """A verdict as stored: where its capture lives and the URL of its file."""

    depot: str
    night: str
    row: VerdictRow
    url: str


def locate_capture(store: Store, capture_id: str, depot: str | None = None, night: str | None = None) -> tuple[str, str]:
    """The (depot, night) of a capture: checked against that night's manifest when both are given, else looked up in
    the committed captures report. LookupError when it is in neither, or in more than one night (give both)."""
    check_name(capture_id, "capture_id")
    if depot is not None and night is not None:
        check_name(depot, "depot"), check_night(night)
        if capture_id not in set(store.read_manifest(depot, night)["capture_id"]):
            raise LookupError(f"capture {capture_id!r} is not in the manifest of depot {depot!r} night {night}")
        return depot, night
    flt = pc.field("capture_id") == capture_id
    if depot is not None:
        flt = flt & (pc.field("depot") == depot)
    if night is not None:
        flt = flt & (pc.field("night") == night)
    found = store.read_report("captures", flt)[["depot", "night"]].drop_duplicates()
    if found.empty:
        raise LookupError(f"capture {capture_id!r} is in no night's report; name it with --depot and --night")
    if len(found) > 1:
        where = ", ".join(f"{d}/{n}" for d, n in found.itertuples(index=False))
        raise LookupError(f"capture {capture_id!r} is in several nights ({where}); name one with --depot and --night")
    d, n = found.iloc[0]
    return str(d), str(n)


def mask_png(data: bytes, size: tuple[int, int]) -> bytes:
    """A mask file checked and re-encoded as a 0/255 PNG; ValueError unless it decodes, is ``size`` (width, height)
    and marks at least one pixel."""
    try:
        mask = read_mask(data)
    except Exception as exc:  # any decoder failure is the analyst's file, said in one line
        raise ValueError(f"the mask is not a readable image: {printable(exc)}") from None
    if (mask.shape[1], mask.shape[0]) != tuple(size):
        raise ValueError(f"the mask is {mask.shape[1]}x{mask.shape[0]} px; the capture is {size[0]}x{size[1]}")
    if not mask.any():
        raise ValueError("the mask marks no pixel (white = anomaly)")
    buf = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def record_verdict(
    store: Store,
    capture_id: str,
    verdict: Verdict | str,
    *,
    by: str,
    mask: bytes | None = None,
    anomaly_type: str | None = None,
    note: str | None = None,
    depot: str | None = None,
    night: str | None = None,
    at: dt.datetime | None = None,
) -> RecordedVerdict:
    """Check and record one verdict (see the module docstring); ValueError / LookupError for bad input, before
    anything is written."""
    verdict = Verdict(verdict)
    if not by.strip():
        raise ValueError("a verdict needs who gave it (--by)")
    if verdict is Verdict.NORMAL and (mask is not None or anomaly_type is not None):
        raise ValueError("a normal verdict takes no mask and no anomaly type")
    if anomaly_type is not None and anomaly_type not in ANOMALY_TYPES:
        raise ValueError(f"unknown anomaly type {anomaly_type!r}; expected one of {', '.join(ANOMALY_TYPES)}")
    depot, night = locate_capture(store, capture_id, depot, night)
    png = None
    if mask is not None:
        manifest = store.read_manifest(depot, night).set_index("capture_id")
        w, h = manifest.loc[capture_id, ["width", "height"]]
        png = mask_png(mask, (int(w), int(h)))
    row = VerdictRow(capture_id=capture_id, verdict=verdict, verdict_by=by.strip(), verdict_at=at or dt.datetime.now(dt.UTC),
                     anomaly_type=anomaly_type, note=note)
    row, url = store.add_verdict(depot, night, row, png)
    return RecordedVerdict(depot, night, row, url)
