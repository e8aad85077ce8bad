"""The operating point of a paired model, chosen on its validation split and kept in its card.

First, for models whose map is ``sigmoid(logit / map_temperature)`` (AnoDFDNet), the temperature: the one of
``TEMPERATURES`` whose uint8-quantized validation maps rank pixels best (pixel AUC; ties to the smaller). A
BCE-trained net puts most background logits far below zero, where ``sigmoid`` is below half a uint8 step, so
the stored map would tie them all at 0 with the anomalies it scores low; a temperature spreads them over the
levels. It is monotone and keeps 0.5 at logit 0, so decisions at 0.5 do not change. Then two numbers: the map
threshold and the minimum finding area. The threshold stays the paper's 0.5 unless
validation pixel F1 is clearly better elsewhere in [0.25, 0.75] (small validation splits are noisy). The
minimum area is the one whose capture decisions ("anomalous" iff a region above the threshold is at least
that large) have the best F1 on validation, ties to the smaller area (a missed foreign body costs more
than a look at a false alarm). Areas are searched on the model grid (``AREA_CANDIDATES`` of a 256 grid, scaled to
the grid's area) and stored in native pixels, the unit
of ``ANODET_MIN_FINDING_AREA`` and of the night's findings.

Last, when validation pairs have pixels the history does not cover, the no-history score
(:func:`anodet_core.scoring.postprocess.weigh_missing_history`): the one of ``NO_HISTORY_SCORES`` below the
threshold whose weighed maps rank validation pixels best, kept only if it adds at least ``_NO_HISTORY_GAIN``
pixel AUC. It is below the threshold, so it changes no finding or decision, only how pixels and captures rank.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy import ndimage

from ..evaluation.metrics import PixelMetrics
from .postprocess import weigh_missing_history
from .predictor import to_input

if TYPE_CHECKING:  # training imports this module (calibrate), on call
    from ..training import PairArrays

__all__ = ["Calibration", "calibrate", "capture_auroc", "AREA_CANDIDATES", "NO_HISTORY_SCORES", "TEMPERATURES", "fit_map_temperature"]

TEMPERATURES = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
AREA_CANDIDATES = (1, 2, 4, 8, 16, 32, 64)  # px of a 256 x 256 model grid; scaled to the grid's area at other sides
_THRESHOLD_RANGE = (0.25, 0.75)
_THRESHOLD_GAIN = 0.02
NO_HISTORY_SCORES = (0.02, 0.05, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3)  # map scores, tried below the threshold only
_NO_HISTORY_GAIN = 0.001  # validation pixel AUC a no-history score must add to be kept


@dataclass
class Calibration:
    """Chosen operating point and the validation figures that chose it."""

    threshold: float
    min_area_model_px: int
    min_finding_area: int  # native px
    pixel_f1_at_05: float
    pixel_f1: float  # at the chosen threshold
    decision_f1: float
    decision_precision: float
    decision_recall: float
    n_val: int
    map_temperature: float | None = None  # set on the model and kept in its card's config; None: no temperature
    no_history_score: float | None = None  # kept in the card; None: the maps as the model gives them

    def config(self) -> dict[str, float]:
        """What the card's ``config`` must add so the rebuilt model stores the maps calibrated here."""
        if self.map_temperature is None or self.map_temperature == 1.0:  # 1: the config's default, nothing to add
            return {}
        return {"map_temperature": self.map_temperature}


@torch.inference_mode()
def _maps(model: torch.nn.Module, data: PairArrays, device: str, batch_size: int = 16) -> np.ndarray:
    model.eval()
    out = []
    for s in range(0, len(data), batch_size):
        sl = slice(s, s + batch_size)
        out.append(model(to_input(data.cur[sl], device, False), to_input(data.his[sl], device, False))[:, 0].float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,) + data.mask.shape[1:], np.float32)


def _has_temperature(model: torch.nn.Module) -> bool:
    return hasattr(model, "forward_logits") and hasattr(getattr(model, "cfg", None), "map_temperature")


@torch.inference_mode()
def _logits(model: torch.nn.Module, val: PairArrays, device: str, batch_size: int = 16) -> torch.Tensor:
    model.eval()
    return torch.cat([model.forward_logits(to_input(val.cur[s:s + batch_size], device, False),  # type: ignore[operator]
                                           to_input(val.his[s:s + batch_size], device, False))[:, 0].float().cpu()
                      for s in range(0, len(val), batch_size)])


def _best_temperature(z: torch.Tensor, mask: np.ndarray) -> float:
    if not mask.any() or mask.all():
        return 1.0
    best, best_auc = 1.0, -1.0
    for t in TEMPERATURES:
        pm = PixelMetrics(threshold=0.5, bins=256)
        pm.update(torch.round(torch.sigmoid(z / t) * 255).numpy() / 255.0, mask)  # the stored map's levels
        auc = float(pm.compute()["auc"])
        if auc > best_auc + 1e-4:
            best, best_auc = t, auc
    return best


def fit_map_temperature(model: torch.nn.Module, val: PairArrays, device: str = "cpu", batch_size: int = 16) -> float:
    """The temperature of ``TEMPERATURES`` whose uint8 validation maps have the best pixel AUC (see module doc)."""
    if not val.mask.any() or val.mask.all():  # nothing to rank: no forward pass
        return 1.0
    return _best_temperature(_logits(model, val, device, batch_size), val.mask)


def _largest_region(score: np.ndarray, threshold: float) -> int:
    above = score > threshold
    if not above.any():
        return 0
    labels, n = ndimage.label(above, structure=np.ones((3, 3), bool))
    return int(np.bincount(labels.ravel())[1:].max()) if n else 0


def _decision_figures(largest: np.ndarray, truth: np.ndarray, area: int) -> tuple[float, float, float]:
    pred = largest >= area
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return (2 * p * r / (p + r) if p + r else 0.0), p, r


def _no_history_score(maps: np.ndarray, val: PairArrays, threshold: float) -> float | None:
    """The no-history score that ranks validation pixels best, or None (see the module docstring)."""
    weight = val.weight(slice(None))
    if weight is None or not val.mask.any() or val.mask.all():
        return None
    scores = torch.from_numpy(maps)

    def auc(level: float | None) -> float:
        pm = PixelMetrics()
        pm.update(weigh_missing_history(scores, weight, level).numpy(), val.mask)
        return float(pm.compute()["auc"])

    levels = [level for level in NO_HISTORY_SCORES if level < threshold]
    if not levels:
        return None
    aucs = {level: auc(level) for level in levels}
    best = max(levels, key=lambda level: (aucs[level], -level))
    return best if aucs[best] >= auc(None) + _NO_HISTORY_GAIN else None


def calibrate(model: torch.nn.Module, val: PairArrays, device: str = "cpu") -> Calibration:
    """Threshold and minimum finding area from validation pairs (see the module docstring)."""
    if len(val) == 0:
        raise ValueError("calibration needs validation pairs")
    temperature = None
    if _has_temperature(model):  # first: the threshold is chosen on the maps the night will store
        z = _logits(model, val, device)  # one forward pass serves the temperature and the maps
        temperature = _best_temperature(z, val.mask)
        cfg: Any = model.cfg
        model.cfg = dataclasses.replace(cfg, map_temperature=temperature)
        maps = torch.sigmoid(z if temperature == 1.0 else z / temperature).numpy()  # what model() now returns
    else:
        maps = _maps(model, val, device)
    pm = PixelMetrics(threshold=0.5)
    pm.update(maps, val.mask)
    f1_05 = pm.compute()["f1"]
    threshold, f1 = 0.5, f1_05
    if val.mask.any():
        cand, _ = pm.best_f1_threshold()
        cand = float(min(max(cand, _THRESHOLD_RANGE[0]), _THRESHOLD_RANGE[1]))
        at = PixelMetrics(threshold=cand)  # the gain is judged where the threshold lands, after clamping
        at.update(maps, val.mask)
        f1_cand = at.compute()["f1"]
        if f1_cand > f1_05 + _THRESHOLD_GAIN:
            threshold, f1 = cand, f1_cand
    largest = np.array([_largest_region(m, threshold) for m in maps])
    truth = np.asarray(val.mask.reshape(len(val), -1).any(axis=1))
    # the same fractions of the capture at every side: at 896 a 64 px region of the 256 grid is 784 px
    grid = float(maps.shape[1] * maps.shape[2]) / (256 * 256)
    areas = sorted({max(1, round(a * grid)) for a in AREA_CANDIDATES})
    best = max(areas, key=lambda a: (_decision_figures(largest, truth, a)[0], -a))
    dec_f1, dec_p, dec_r = _decision_figures(largest, truth, best)
    native_px = float(np.median([w * h for w, h in val.sizes])) if val.sizes else float(maps.shape[1] * maps.shape[2])
    per_model_px = native_px / float(maps.shape[1] * maps.shape[2])
    return Calibration(threshold=round(threshold, 4), min_area_model_px=best,
                       min_finding_area=max(1, int(round(best * per_model_px))), pixel_f1_at_05=f1_05, pixel_f1=f1,
                       decision_f1=dec_f1, decision_precision=dec_p, decision_recall=dec_r, n_val=len(val),
                       map_temperature=temperature, no_history_score=_no_history_score(maps, val, threshold))


def capture_auroc(model: torch.nn.Module, val: PairArrays, cal: Calibration, device: str = "cpu") -> float:
    """Image AUROC of validation captures ranked by their capture score (the night's ranking) at ``cal``'s
    operating point: the maps weighed by its no-history score, regions of at least its minimum area; NaN with one class."""
    from ..evaluation.metrics import roc_auc
    from .postprocess import capture_score

    maps = torch.from_numpy(_maps(model, val, device))
    scores = [capture_score(weigh_missing_history(maps[i:i + 1], val.weight(slice(i, i + 1)), cal.no_history_score)[0].numpy(),
                            cal.min_area_model_px) for i in range(len(val))]
    return float(roc_auc(np.asarray(scores, float), np.asarray(val.mask.reshape(len(val), -1).any(axis=1))))
