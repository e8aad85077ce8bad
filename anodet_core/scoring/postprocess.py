"""Post-processing of anomaly maps: model-resolution map -> stored native map -> figures -> findings -> decision.

The one path shared by the nightly run (:mod:`anodet_core.night.batch`), ``anodet predict``
(:mod:`anodet_core.scoring.folders`) and ``anodet evaluate`` (:func:`anodet_core.evaluation.evaluate.evaluate_pairs`),
so a pair gets the same stored map, findings and decision whichever of them scores it.

A capture is decided with an :class:`OperatingPoint`: the map threshold and the minimum finding area in
native pixels. :func:`operating_point` resolves it from the settings (ANODET_THRESHOLD,
ANODET_MIN_FINDING_AREA) over the model card over the defaults; a night pins it once in its plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from ..store.maps import dequantize, quantize
from ..store.schemas import DECISION_ANOMALOUS, DECISION_NORMAL

if TYPE_CHECKING:
    from ..config import Settings
    from ..registry.model_store import ModelCard

DEFAULT_MIN_AREA = 64  # native px, when neither the settings nor the card give one


@dataclass(frozen=True)
class OperatingPoint:
    """How a map is decided: findings are 8-connected regions with score > ``threshold`` of at least
    ``min_area`` native px; a capture is anomalous iff it has a finding.

    ``no_history_score``: the score of a pixel the history does not cover (:func:`weigh_missing_history`), from
    the card; None: the model's map as it is. Used only while below ``threshold``, so it never makes a finding.
    """

    threshold: float
    min_area: int  # native px
    no_history_score: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.threshold) < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {self.threshold}")
        if isinstance(self.min_area, bool) or int(self.min_area) != self.min_area or self.min_area < 1:
            raise ValueError(f"min finding area must be an integer >= 1 (native px), got {self.min_area!r}")
        object.__setattr__(self, "threshold", float(self.threshold))
        object.__setattr__(self, "min_area", int(self.min_area))
        level = self.no_history_score
        if level is not None and not 0.0 < float(level) < 1.0:
            raise ValueError(f"no-history score must be in (0, 1), got {level}")
        if level is not None and float(level) >= self.threshold:  # e.g. ANODET_THRESHOLD below it: it would alarm
            object.__setattr__(self, "no_history_score", None)


def resolve_operating_point(card: ModelCard, threshold: float | None = None, min_area: int | None = None) -> OperatingPoint:
    """Explicit values over the card's over :data:`DEFAULT_MIN_AREA` (the card always has a threshold)."""
    if min_area is None:
        min_area = card.min_finding_area if card.min_finding_area is not None else DEFAULT_MIN_AREA
    return OperatingPoint(card.threshold if threshold is None else threshold, min_area, card.no_history_score)


def operating_point(card: ModelCard, settings: Settings) -> OperatingPoint:
    """threshold: ``settings.threshold``, else the card's; min_area: ``settings.min_finding_area``, else the
    card's, else 64."""
    return resolve_operating_point(card, settings.threshold, settings.min_finding_area)


# ------------------------------------------------------------------------------------------ missing history


def weigh_missing_history(score: torch.Tensor, weight: np.ndarray | torch.Tensor | None, level: float | None) -> torch.Tensor:
    """``score`` (a [0, 1] map, (..., H, W)) where the history is missing, moved toward the no-evidence ``level``.

    Where the registered history does not cover cur, cur fills in (:func:`anodet_core.imaging.prepare.fill_uncovered`),
    the pair shows no difference and a paired map says "normal" with full confidence, below the normal pixels it
    did compare. There it knows nothing: a pixel without history is as likely anomalous as any other, so its
    score is ``level``, chosen on validation (:func:`anodet_core.scoring.calibration.calibrate`) where it ranks
    pixels best. ``weight`` is the history's weight (:func:`anodet_core.imaging.prepare.history_weight`, 1 =
    fully compared): in logits, ``max(z, w z + (1 - w) logit(level))``, so a pixel is never scored lower than the
    model scored it, and pixels with ``w == 1`` are returned bit for bit. ``level`` below the threshold cannot
    make a finding. None (either): ``score`` unchanged.
    """
    if weight is None or level is None:
        return score
    w = torch.as_tensor(weight, device=score.device).to(torch.float32)
    missing = w < 1.0
    if not bool(missing.any()):
        return score
    z = torch.logit(score.float().clamp(1e-12, 1.0 - 1e-12))
    z0 = math.log(level / (1.0 - level))
    weighed = torch.sigmoid(torch.maximum(z, w * z + (1.0 - w) * z0)).to(score.dtype)
    return torch.where(missing, weighed, score)


# ------------------------------------------------------------------------------------------ native maps


def to_native(score: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """One model-resolution map (H, W) to the capture's native (width, height), bilinear, as float32 numpy."""
    w, h = size
    up = F.interpolate(score[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)
    return up[0, 0].clamp_(0, 1).cpu().numpy()


def upsample_u8(q: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a uint8 map to (width, height), computed only where the map is nonzero.

    Maps of a trained model are zero almost everywhere: resampling just the box whose bilinear support touches
    nonzero pixels (Pillow's ``box``: same sampling grid) costs a small fraction of a whole-image resize.
    Pillow's fixed-point weights differ by at most one level from a whole-image resize.
    """
    w_out, h_out = size
    h, w = q.shape
    out = np.zeros((h_out, w_out), np.uint8)
    rows = np.flatnonzero(q.any(axis=1))
    if rows.size == 0:
        return out
    cols = np.flatnonzero(q.any(axis=0))
    sh, sw = h / h_out, w / w_out

    def span(lo: int, hi: int, s: float, n: int) -> tuple[int, int]:
        return max(0, math.floor((lo - 0.5) / s - 0.5)), min(n, math.ceil((hi + 1.5) / s - 0.5) + 1)

    y0, y1 = span(int(rows[0]), int(rows[-1]), sh, h_out)
    x0, x1 = span(int(cols[0]), int(cols[-1]), sw, w_out)
    box = (x0 * sw, y0 * sh, x1 * sw, y1 * sh)
    out[y0:y1, x0:x1] = np.asarray(Image.fromarray(q).resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR, box=box))
    return out


def native_map(score: torch.Tensor, size: tuple[int, int], dtype: str, quantized: np.ndarray | None = None) -> np.ndarray:
    """Model-resolution [0, 1] map -> stored (quantized) map at the capture's native (width, height).

    uint8 maps are quantized at model resolution and upsampled by Pillow's bilinear resize in uint8
    (:func:`upsample_u8`): several times cheaper than a float upsample of a full-size capture, and within one
    quantization step of it. float16 maps are upsampled in float, then cast.
    """
    if dtype == "uint8":  # ``quantized``: the caller's uint8 model-resolution map, when it has one already
        return upsample_u8(quantize(score.float().numpy(), "uint8") if quantized is None else quantized, size)
    return quantize(to_native(score, size), dtype)


# ------------------------------------------------------------------------------------------ findings


@dataclass
class Finding:
    """One connected region of a native map: box [x0, x1) x [y0, y1), pixel count, peak and mean score."""

    x0: int
    y0: int
    x1: int
    y1: int
    area_px: int
    peak_score: float
    mean_score: float


def find_regions(score: np.ndarray, threshold: float = 0.5, min_area: int = 1) -> list[Finding]:
    """Connected regions (8-connectivity) with score > threshold and at least ``min_area`` px, by peak score."""
    above = score > threshold
    if not above.any():  # the common case costs one pass
        return []
    labels, n = ndimage.label(above, structure=np.ones((3, 3), bool))
    idx = np.arange(1, n + 1)
    areas = ndimage.sum_labels(above, labels, idx)
    peaks = ndimage.maximum(score, labels, idx)
    means = ndimage.mean(score, labels, idx)
    out = []
    for k, sl in enumerate(ndimage.find_objects(labels)):
        if sl is None or areas[k] < min_area:
            continue
        out.append(Finding(sl[1].start, sl[0].start, sl[1].stop, sl[0].stop, int(areas[k]), float(peaks[k]), float(means[k])))
    out.sort(key=lambda f: -f.peak_score)
    return out


def capture_score(score: np.ndarray, min_area: float) -> float:
    """The highest level ``t`` at which ``score`` holds an 8-connected region of ``>= t`` of ``min_area`` px.

    The capture's ranking score, consistent with its decision: a map has a finding (a region above the
    threshold of at least the minimum area) iff its capture score is above the threshold, up to resampling when
    computed at model resolution. Unlike the map maximum it ignores specks smaller than a finding, which the
    decision ignores too. Binary search over the map's levels (the region test is monotone in ``t``).
    """
    levels = np.unique(score)
    need = max(1.0, float(min_area))
    structure = np.ones((3, 3), bool)

    def has_region(t: float) -> bool:
        above = score >= t
        if above.sum() < need:
            return False
        labels, n = ndimage.label(above, structure=structure)
        return bool(np.bincount(labels.ravel())[1:].max() >= need) if n else False

    lo, hi = 0, len(levels) - 1  # has_region(levels[0]) holds whenever the map has >= min_area px
    if not has_region(float(levels[0])):
        return float(levels[0])
    while lo < hi:  # invariant: has_region(levels[lo])
        mid = (lo + hi + 1) // 2
        if has_region(float(levels[mid])):
            lo = mid
        else:
            hi = mid - 1
    return float(levels[lo])


# ------------------------------------------------------------------------------------------ one capture


@dataclass(frozen=True)
class MapFigures:
    """The figures of one post-processed map: the report's columns of the same names (:class:`CaptureRow`).

    All but ``capture_score`` are measured on the stored (native, quantized) map; ``capture_score`` is
    :func:`capture_score` of the model-resolution map, the score captures are ranked by.
    """

    threshold: float
    score_max: float
    score_mean: float
    capture_score: float
    anomalous_area_px: int  # native px above the threshold
    anomalous_area_frac: float
    n_findings: int


@dataclass
class ScoredMap:
    """One capture after post-processing: the stored map, its figures, findings and decision."""

    stored: np.ndarray  # native (H, W), uint8 (score * 255) or float16: what the night writes to Zarr
    figures: MapFigures
    findings: list[Finding]
    decision: str  # DECISION_ANOMALOUS iff any finding, else DECISION_NORMAL

    @property
    def anomalous(self) -> bool:
        """Whether the decision is anomalous (the map has at least one finding)."""
        return self.decision == DECISION_ANOMALOUS

    def native(self) -> np.ndarray:
        """The stored map as float32 scores in [0, 1] (what ``read_map`` returns for it)."""
        return dequantize(self.stored)


def postprocess(score: torch.Tensor, native_size: tuple[int, int], op: OperatingPoint, map_dtype: str = "uint8",
                history_weight: np.ndarray | None = None) -> ScoredMap:
    """Model-resolution [0, 1] map (H, W) -> stored native map, its figures, findings and decision.

    ``history_weight`` (model resolution, :attr:`anodet_core.imaging.prepare.PreparedPair.history_weight`): where
    it is below 1 the map is weighed toward ``op.no_history_score`` first (:func:`weigh_missing_history`). Figures
    and findings come from the stored (quantized) map, so a report and the Zarr agree exactly. Maps whose peak
    is not above the threshold (nearly all of a night) skip the float map and the labelling.
    """
    score = weigh_missing_history(score, history_weight, op.no_history_score)
    model_map = quantize(score.float().cpu().numpy(), "uint8")  # levels of 1/255: at most 9 labellings below
    stored = native_map(score, native_size, map_dtype, model_map)  # uint8 maps reuse it: one quantization
    # the minimum finding area in model pixels: the ranking score is computed at model resolution (cheap)
    model_area = op.min_area * model_map.size / (native_size[0] * native_size[1])
    peak = float(dequantize(np.asarray(stored.max()).reshape(1))[0])
    if peak > op.threshold:  # the rare case pays for the float map and the labelling
        native = dequantize(stored)
        finds = find_regions(native, op.threshold, op.min_area)
        above = int((native > op.threshold).sum())
    else:
        finds, above = [], 0
    mean = float(stored.mean(dtype=np.float64)) / (255.0 if stored.dtype == np.uint8 else 1.0)
    figures = MapFigures(
        threshold=op.threshold,
        score_max=peak,
        score_mean=mean,
        capture_score=capture_score(model_map, model_area) / 255.0,
        anomalous_area_px=above,
        anomalous_area_frac=above / stored.size,
        n_findings=len(finds),
    )
    return ScoredMap(stored, figures, finds, DECISION_ANOMALOUS if finds else DECISION_NORMAL)
