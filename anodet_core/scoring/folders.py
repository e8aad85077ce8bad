"""Scoring a folder of unlabelled pairs (``DIR/<pair>/cur.*`` and ``his.*``) outside the nightly layout.

Maps, figures, findings and decisions come from :func:`anodet_core.scoring.postprocess.postprocess` at the model's
operating point, as in the nightly run (uint8 maps, as a night stores them by default).
"""

from __future__ import annotations

import glob
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import Settings, resolve_device
from ..imaging.io import ImageError, encode_png
from ..imaging.prepare import PreparedPair, prepare_pair
from ..registry.model_store import load
from ..store.layout import Store
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
        ("map_png", pa.string()),
        ("model", pa.string()),
    ]
)


def _find(folder: str, stem: str) -> str | None:
    hits = sorted(glob.glob(os.path.join(folder, stem + ".*")))
    return hits[0] if hits else None


def _score(predictor: Predictor, op: OperatingPoint, out_dir: str, ready: list[tuple[dict[str, Any], PreparedPair]]) -> None:
    """Run the model on the prepared pairs, write their map PNGs and complete their rows in place."""
    scores = predictor.predict(np.stack([p.cur for _, p in ready]), np.stack([p.his for _, p in ready])).cpu()
    for k, (row, prep) in enumerate(ready):
        scored = postprocess(scores[k], prep.native_size, op, "uint8")
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
    """Write ``out/<pair>.png`` (map at cur's native size, 0-255) and ``out/scores.parquet``; returns counts.

    Pairs are prepared at the model's registered input size (``Predictor.info.input_size``).
    """
    if not os.path.isdir(pairs_dir):
        raise FileNotFoundError(f"pairs folder not found: {pairs_dir}")
    model, card = load(store, model_ref, resolve_device(settings.device))
    predictor = Predictor(model, resolve_device(settings.device), fast=settings.fast)
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
            rows.append({**row, "status": "error", "error": "pair folder needs cur.* and his.*"})
            continue
        try:
            with open(cur, "rb") as a, open(his, "rb") as b:
                prep = prepare_pair(a.read(), b.read(), size=predictor.info.input_size, registration=settings.registration)
        except (ImageError, ValueError, OSError) as exc:
            rows.append({**row, "status": "error", "error": str(exc)})
            continue
        reg = prep.registration
        row.update(status="ok" if reg.ok else "registration_failed", reg_method=reg.method,
                   reg_ncc_before=reg.ncc_before, reg_ncc_after=reg.ncc_after)
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
    return {"n": sum(r["status"] != "error" for r in rows), "errors": sum(r["status"] == "error" for r in rows), "table": path}
