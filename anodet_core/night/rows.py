"""The report rows of a batch: one :class:`~anodet_core.store.schemas.CaptureRow` per job, and its findings.

A scored capture's map is post-processed and written here (:func:`finish_pair`, :func:`finish_single`, run in
the batch's IO threads); the row is completed once its map is written (:func:`anodet_core.night.batch.process_batch`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from ..imaging.prepare import PreparedPair
from ..registry.model_store import ModelCard
from ..scoring.postprocess import Finding, OperatingPoint, ScoredMap, postprocess
from ..single_image import MAP_THRESHOLD
from ..store.maps import MapWriter
from ..store.schemas import (
    DECISION_ANOMALOUS,
    DECISION_NORMAL,
    STATUS_OK,
    STATUS_REGISTRATION_FAILED,
    CaptureRow,
    FindingRow,
    Status,
)
from .history import PairJob
from .prep_pool import PreparedImage


@dataclass
class BatchResult:
    """Report rows of one batch: one capture row per job (CAPTURE_REPORT_SCHEMA) and its finding rows."""

    captures: list[CaptureRow] = field(default_factory=list)
    findings: list[FindingRow] = field(default_factory=list)


def capture_row(job: PairJob, card: ModelCard | None, run_id: str, status: Status, **columns: Any) -> CaptureRow:
    """The capture row of ``job``: manifest and history columns, model, run and map row, plus ``columns``."""
    c = job.capture
    return CaptureRow(
        capture_id=c["capture_id"],
        train_id=c["train_id"],
        car=int(c["car"]),
        region_id=c["region_id"],
        captured_at=c["captured_at"],
        uri=c["uri"],
        status=status,
        history_source=job.history_source,
        history_capture_id=job.history_capture_id,
        history_uri=job.history_uri,
        model_name=card.name if card else None,
        model_version=card.version if card else None,
        run_id=run_id,
        map_index=job.index,
        **columns,
    )


class Scored(NamedTuple):
    """A scored capture's status, report columns (figures, registration, timings) and findings."""

    status: Status
    columns: dict[str, Any]
    findings: list[Finding]


def store_map(maps: MapWriter, index: int, score: torch.Tensor, native_size: tuple[int, int],
               op: OperatingPoint, history_weight: np.ndarray | None = None) -> tuple[ScoredMap, float]:
    """Post-process a model-resolution [0, 1] map (:func:`anodet_core.scoring.postprocess.postprocess`) and write its Zarr
    row; returns it and the milliseconds spent. Shared by paired and single-image captures."""
    t1 = time.perf_counter()
    scored = postprocess(score, native_size, op, str(maps.dtype), history_weight)
    maps.write(index, scored.stored)
    return scored, (time.perf_counter() - t1) * 1e3


def finish_pair(maps: MapWriter, job: PairJob, prep: PreparedPair, score: torch.Tensor, op: OperatingPoint) -> Scored:
    """Native map, figures, findings and decision of one scored pair at the night's operating point; writes its
    Zarr row. Runs in the writer thread."""
    scored, t_write = store_map(maps, job.index, score, prep.native_size, op, prep.history_weight)
    reg = prep.registration
    columns = dict(
        asdict(scored.figures),
        t_write_ms=t_write,
        decision=scored.decision,
        reg_method=reg.method,
        reg_ok=reg.ok,
        reg_inliers=reg.inliers,
        reg_residual_px=reg.residual_px,
        reg_ncc_before=reg.ncc_before,
        reg_ncc_after=reg.ncc_after,
        history_coverage=prep.valid_frac,
        t_decode_ms=prep.t_decode_ms,
        t_register_ms=prep.t_register_ms,
    )
    return Scored(STATUS_OK if reg.ok else STATUS_REGISTRATION_FAILED, columns, scored.findings)


def finish_single(maps: MapWriter, job: PairJob, prep: PreparedImage, score: torch.Tensor, image_score: float,
                   image_threshold: float, op: OperatingPoint) -> Scored:
    """Like :func:`finish_pair` for a capture scored by a single-image model: ``score`` is its normalised map.

    Findings are regions of the normalised map above MAP_THRESHOLD (0.5 = twice the normal pixel p99.9), not
    the night's threshold, which is the paired model's map threshold; the minimum area is the night's
    (``op.min_area``). Decision: anomalous when the image score is above the card's calibrated image threshold
    (global evidence, e.g. a missing part that changes the whole image) OR the map has at least one finding
    (local evidence); normal only when neither fires. So an anomalous capture may have no finding (image
    score alone) and findings always make it anomalous, as for paired captures.
    """
    scored, t_write = store_map(maps, job.index, score, prep.native_size, OperatingPoint(MAP_THRESHOLD, op.min_area))
    anomalous = image_score > image_threshold or scored.anomalous
    columns = dict(
        asdict(scored.figures),
        t_write_ms=t_write,
        decision=DECISION_ANOMALOUS if anomalous else DECISION_NORMAL,
        t_decode_ms=prep.t_decode_ms,
    )
    return Scored(STATUS_OK, columns, scored.findings)


def finding_rows(row: CaptureRow, finds: list[Finding], card: ModelCard, run_id: str) -> list[FindingRow]:
    """The finding rows of a capture row: ``finding_id`` 0.. in the order of ``finds`` (by decreasing peak)."""
    return [
        FindingRow(
            capture_id=row.capture_id,
            finding_id=i,
            train_id=row.train_id,
            car=row.car,
            region_id=row.region_id,
            x0=f.x0, y0=f.y0, x1=f.x1, y1=f.y1,
            area_px=f.area_px,
            peak_score=f.peak_score,
            mean_score=f.mean_score,
            model_name=card.name,
            model_version=card.version,
            run_id=run_id,
        )
        for i, f in enumerate(finds)
    ]


def invalid_row(job: PairJob, card: ModelCard, run_id: str) -> CaptureRow:
    """The report row of an invalid manifest row: its values as read (nulls stay null), the reason as ``error``."""
    c = job.capture
    return CaptureRow(
        capture_id=c["capture_id"],
        train_id=c["train_id"],
        car=None if c["car"] is None else int(c["car"]),  # type: ignore[arg-type]  # null: the report says so
        region_id=c["region_id"],
        captured_at=c["captured_at"],
        uri=c["uri"],
        status=Status.INVALID_MANIFEST,
        error=job.invalid,
        model_name=card.name,
        model_version=card.version,
        run_id=run_id,
        map_index=job.index,
    )


