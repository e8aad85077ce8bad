"""Pixel metrics of a paired model on prepared pairs, at model resolution."""

from __future__ import annotations

import torch

from ..evaluation.metrics import PixelMetrics
from ..scoring.postprocess import weigh_missing_history
from ..scoring.predictor import to_input
from .data import PairArrays


@torch.inference_mode()
def pixel_metrics(model: torch.nn.Module, data: PairArrays, device: str = "cpu", batch_size: int = 16, threshold: float = 0.5,
                  no_history_score: float | None = None) -> PixelMetrics:
    """Accumulated pixel metrics (see anodet_core.evaluation.metrics) of a model on prepared pairs at model resolution.

    ``no_history_score`` (a card's): maps weighed toward it where the history is missing, as the night does
    (:func:`anodet_core.scoring.postprocess.weigh_missing_history`).
    """
    model.eval()
    pm = PixelMetrics(threshold=threshold)
    for s in range(0, len(data), batch_size):
        sl = slice(s, s + batch_size)
        out = model(to_input(data.cur[sl], device, False), to_input(data.his[sl], device, False))[:, 0]
        out = weigh_missing_history(out.float().cpu(), data.weight(sl), no_history_score)
        pm.update(out.float().cpu().numpy(), data.mask[sl])
    return pm


def evaluate_arrays(model: torch.nn.Module, data: PairArrays, device: str = "cpu", batch_size: int = 16, threshold: float = 0.5,
                    no_history_score: float | None = None) -> dict[str, float]:
    """Pixel metrics at ``threshold`` (the paper's 0.5 by default), plus AUC and EER; ``no_history_score`` as in
    :func:`pixel_metrics`."""
    return pixel_metrics(model, data, device, batch_size, threshold, no_history_score).compute()
