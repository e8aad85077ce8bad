"""Scoring a folder of unlabelled pairs (``DIR/<pair>/cur.*`` and ``his.*``) outside the nightly layout.

Maps, figures, findings and decisions come from :func:`anodet_core.scoring.postprocess.postprocess` at the model's
operating point, as in the nightly run (uint8 maps, as a night stores them by default). A pair that cannot be
scored (a missing, unreadable or undecodable file) gets a stable reason (:class:`UnscoredPair`) and the others go on.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import Settings, resolve_device
from ..imaging.io import ImageError, decode, encode_png, read_mask
from ..imaging.prepare import PreparedPair, prepare_pair
from ..registry.model_store import load
from ..store.layout import Store
from ..text import printable
from .backends import make_predictor
from .postprocess import OperatingPoint, operating_point, postprocess
from .predictor import Predictor

SCORES_SCHEMA = pa.schema(  # out/scores.parquet, one row per pair folder
    [
        ("pair_id", pa.string()),
        ("status", pa.string()),  # ok | registration_failed | error
        ("error", pa.string()),
        ("decision", pa.string()),
        ("score_max", pa.float32()),
        ("score_mean", pa.float32()),
        ("capture_score", pa.float32()),  # the decision-consistent ranking score (anodet_core.scoring.postprocess)
        ("anomalous_area_frac", pa.float32()),
        ("n_findings", pa.int32()),
        ("reg_method", pa.string()),
        ("reg_ncc_before", pa.float32()),
        ("reg_ncc_after", pa.float32()),
        ("history_coverage", pa.float32()),  # share of cur the registered history covers
        ("map_png", pa.string()),
        ("model", pa.string()),
    ]
)


class UnscoredPair(Exception):
    """A pair that cannot be scored; ``reason`` is stable (no traceback, no memory address) and names the file."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_ADDRESS = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>|0x[0-9a-fA-F]{6,}")  # repr()s of objects in messages


def _stable(exc: BaseException, *, typed: bool = True) -> str:
    """An exception as one stable, printable line: its message (after its type) without object addresses."""
    text = _ADDRESS.sub("", str(exc)).strip()
    return printable(f"{type(exc).__name__}: {text}" if typed and text else text or type(exc).__name__)


def _undecodable(path: str, exc: ImageError) -> UnscoredPair:
    return UnscoredPair(f"{os.path.basename(path)}: cannot decode image ({_stable(exc, typed=False)})")


def _read_file(path: str, read: Callable[[str], bytes]) -> bytes:
    try:
        return read(path)
    except OSError as exc:
        raise UnscoredPair(f"{os.path.basename(path)}: cannot read ({exc.strerror or type(exc).__name__})") from None


def read_local(path: str) -> bytes:
    """The bytes of a local file (the default reader of pair folders)."""
    with open(path, "rb") as fh:
        return fh.read()


def prepare_files(cur: str, his: str, *, size: int, registration: str,
                  read: Callable[[str], bytes] = read_local) -> PreparedPair:
    """:func:`prepare_pair` of the files ``cur`` and ``his``; :class:`UnscoredPair` when it cannot be prepared.

    The reason names the file that is unreadable or not a decodable image, else the preparation's error.
    """
    data = {path: _read_file(path, read) for path in (cur, his)}
    try:
        return prepare_pair(data[cur], data[his], size=size, registration=registration)
    except ImageError as exc:
        for path, raw in data.items():  # which one: decoded again only on this rare path
            try:
                decode(raw, min_size=(size, size))
            except ImageError as alone:
                raise _undecodable(path, alone) from None
        raise UnscoredPair(f"cannot prepare the pair ({_stable(exc, typed=False)})") from None  # e.g. his far larger
    except Exception as exc:  # one bad pair must not end the run: anything else is this pair's reason too
        raise UnscoredPair(f"cannot prepare the pair ({_stable(exc)})") from None


def read_mask_file(path: str, native_size: tuple[int, int], read: Callable[[str], bytes] = read_local) -> np.ndarray:
    """A label mask at cur's native size; :class:`UnscoredPair` when it is unreadable or not an image."""
    raw = _read_file(path, read)
    try:
        return read_mask(raw, native_size)
    except ImageError as exc:
        raise _undecodable(path, exc) from None


MISSING_FILES = "pair folder needs cur.* and his.*"


def _find(folder: str, stem: str) -> str | None:
    hits = sorted(glob.glob(os.path.join(folder, stem + ".*")))
    return hits[0] if hits else None


def _score(predictor: Predictor, op: OperatingPoint, out_dir: str, ready: list[tuple[dict[str, Any], PreparedPair]]) -> None:
    """Run the model on the prepared pairs, write their map PNGs and complete their rows in place."""
    scores = predictor.predict(np.stack([p.cur for _, p in ready]), np.stack([p.his for _, p in ready])).cpu()
    for k, (row, prep) in enumerate(ready):
        scored = postprocess(scores[k], prep.native_size, op, "uint8", prep.history_weight)
        png = os.path.join(out_dir, f"{row['pair_id']}.png")
        with open(png, "wb") as fh:
            fh.write(encode_png(scored.stored))
        f = scored.figures
        row.update(
            decision=scored.decision,
            score_max=f.score_max,
            score_mean=f.score_mean,
            capture_score=f.capture_score,
            anomalous_area_frac=f.anomalous_area_frac,
            n_findings=f.n_findings,
            map_png=png,
        )


def predict_folders(store: Store, model_ref: str, pairs_dir: str, out_dir: str, settings: Settings) -> dict[str, Any]:
    """Write ``out/<pair>.png`` (map at cur's native size, 0-255) and ``out/scores.parquet`` (a row per folder).

    Returns ``n`` (pairs scored), ``errors`` (pairs not scored), ``failed`` (``(pair_id, reason)`` of each, in
    pair order) and ``table`` (the scores file). Pairs are prepared at the model's registered input size
    (``Predictor.info.input_size``).
    """
    if not os.path.isdir(pairs_dir):
        raise FileNotFoundError(f"pairs folder not found: {pairs_dir}")
    model, card = load(store, model_ref, resolve_device(settings.device))
    predictor = make_predictor(store, model, card, backend=settings.backend, device=resolve_device(settings.device),
                               fast=settings.fast, batch_size=settings.batch_size)
    os.makedirs(out_dir, exist_ok=True)
    folders = sorted(d for d in glob.glob(os.path.join(pairs_dir, "*")) if os.path.isdir(d))
    rows: list[dict[str, Any]] = []
    ready: list[tuple[dict[str, Any], PreparedPair]] = []
    model_name = f"{card.name}:{card.version}" if card.version else card.name
    op = operating_point(card, settings)
    for folder in folders:
        pid = os.path.basename(folder)
        row: dict[str, Any] = {"pair_id": pid, "model": model_name}
        cur, his = _find(folder, "cur"), _find(folder, "his")
        if not cur or not his:
            rows.append({**row, "status": "error", "error": MISSING_FILES})
            continue
        try:
            prep = prepare_files(cur, his, size=predictor.info.input_size, registration=settings.registration)
        except UnscoredPair as exc:
            rows.append({**row, "status": "error", "error": exc.reason})
            continue
        reg = prep.registration
        row.update(status="ok" if reg.ok else "registration_failed", reg_method=reg.method,
                   reg_ncc_before=reg.ncc_before, reg_ncc_after=reg.ncc_after, history_coverage=prep.valid_frac)
        ready.append((row, prep))
        if len(ready) >= settings.batch_size:
            _score(predictor, op, out_dir, ready)
            rows.extend(r for r, _ in ready)
            ready = []
    if ready:
        _score(predictor, op, out_dir, ready)
        rows.extend(r for r, _ in ready)
    rows.sort(key=lambda r: r["pair_id"])
    table = pa.Table.from_pylist([{n: r.get(n) for n in SCORES_SCHEMA.names} for r in rows], schema=SCORES_SCHEMA)
    path = os.path.join(out_dir, "scores.parquet")
    pq.write_table(table, path)
    failed = [(r["pair_id"], r["error"]) for r in rows if r["status"] == "error"]
    return {"n": len(rows) - len(failed), "errors": len(failed), "failed": failed, "table": path}
