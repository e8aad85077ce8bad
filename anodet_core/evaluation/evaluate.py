"""Evaluating a paired model on a labelled folder dataset, at the captures' native resolution.

Dataset: ``DIR/<sample>/cur.*, his.*, mask.*`` (white = anomaly; a missing mask means a normal sample),
optionally split into ``DIR/train``, ``DIR/val``, ``DIR/test`` (the test split is evaluated when present).

Every pair goes through the nightly post-processing (:func:`anodet_core.scoring.postprocess.postprocess`): the same stored
(quantized) native map, findings and decision a night would give it at the same operating point. Metric
definitions are those of :mod:`anodet_core.evaluation.metrics`, measured on that stored map: pixel confusion counts summed
over every pixel of the split, at the paper's ``score > 0.5`` and at the operating point's threshold; a sample
is decided anomalous iff it has a finding at the operating point (threshold and minimum finding area); image
AUROC ranks by the capture score (:func:`anodet_core.scoring.postprocess.capture_score`), as the night does.
The pixel figures are given twice: over every pixel (the paper's), and over the pixels the registered history
covers (``*_covered``): where it does not, cur fills in and no paired model can see a change, the standard
no-data mask of change detection; ``uncovered_frac`` and ``uncovered_anomalous_frac`` say how much that is. A
pair that cannot be scored (an unreadable or undecodable cur, his or mask) is skipped with its reason, and the
figures are those of the pairs scored.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..imaging.prepare import PreparedPair
from ..registry.model_store import ModelCard
from ..scoring.folders import MISSING_FILES, UnscoredPair, prepare_files, read_local, read_mask_file
from ..scoring.postprocess import OperatingPoint, ScoredMap, postprocess, resolve_operating_point
from ..scoring.predictor import Predictor
from ..training import LabelledPair, folder_pairs
from .metrics import PixelMetrics, confusion_counts, image_metrics, scores_from_counts


def dataset_split(root: str, split: str | None = None) -> tuple[str, list[LabelledPair]]:
    """The folder to evaluate: ``split`` if given, else ``test/`` when present, else ``root`` itself."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset folder not found: {root}")
    if split:
        path = os.path.join(root, split)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"dataset has no {split!r} split: {path}")
    else:
        path = os.path.join(root, "test") if os.path.isdir(os.path.join(root, "test")) else root
    pairs = folder_pairs(path)
    if not pairs:
        raise ValueError(f"no pair folders (with cur.* and his.*) under {path}")
    return path, pairs


def unpaired_folders(path: str, pairs: list[LabelledPair]) -> list[tuple[str, str]]:
    """``(folder, reason)`` of each sub-folder of ``path`` that is not one of ``pairs`` (it lacks cur.* or his.*)."""
    keys = {p.key for p in pairs}
    names = sorted(n for n in os.listdir(path) if os.path.isdir(os.path.join(path, n)) and n not in keys)
    return [(n, MISSING_FILES) for n in names]


PAPER_THRESHOLD = 0.5  # map threshold of the paper's pixel figures


class NothingScored(ValueError):
    """No pair of the split could be scored; ``skipped`` holds ``(key, reason)`` of every one."""

    def __init__(self, skipped: list[tuple[str, str]]) -> None:
        super().__init__(f"none of the {len(skipped)} pairs could be scored")
        self.skipped = skipped


def evaluate_pairs(
    predictor: Predictor,
    pairs: list[LabelledPair],
    op: OperatingPoint,
    *,
    registration: str = "auto",
    batch_size: int = 8,
    map_dtype: str = "uint8",
    read: Callable[[str], bytes] = read_local,
    on_scored: Callable[[LabelledPair, ScoredMap], None] | None = None,
) -> dict[str, Any]:
    """Pixel, operating-point and capture-decision metrics of one split, at native resolution.

    Keys: the paper's pixel figures at > 0.5 (``tp, fp, tn, fn, precision, recall, oa, f1, iou, auc, eer``);
    pixel figures at the operating point's threshold (``precision_at_op, recall_at_op, f1_at_op, iou_at_op``:
    every pixel above it, as ``anomalous_area_px`` counts them); ``threshold``, ``min_area`` (the operating
    point); capture decisions (``image_auroc`` of the capture score, ``decision_precision``, ``decision_recall``,
    ``false_alarms``: normal samples decided anomalous); the paper's pixel figures over the pixels the history
    covers (``precision_covered, recall_covered, f1_covered, iou_covered, auc_covered``) with
    ``uncovered_frac`` (share of the split's pixels without history) and ``uncovered_anomalous_frac`` (share of
    its anomalous pixels); ``n_samples`` (pairs scored), ``n_anomalous``;
    ``skipped``: ``(key, reason)`` of every pair that could not be scored, in input order (:class:`NothingScored`
    when that is all of them); for curves (:mod:`anodet_core.reporting.evaluation_plots`): ``image_scores`` and
    ``image_labels`` (per pair scored) and ``pixel_hists`` (the paper pixels' ``(pos_hist, neg_hist)``).
    ``map_dtype`` is the stored map's (a night's ANODET_MAP_DTYPE); ``read`` reads a
    file (default: a local one); ``on_scored(pair, scored)`` sees every post-processed pair. Pairs are
    prepared at the predictor's input size (``predictor.info.input_size``).
    """
    size = predictor.info.input_size  # the model's registered input size
    pm = PixelMetrics(threshold=PAPER_THRESHOLD)
    pm_covered = PixelMetrics(threshold=PAPER_THRESHOLD)  # the pixels the registered history covers
    uncovered = [0, 0]  # pixels, anomalous pixels without history
    at_op = [0, 0, 0, 0]  # tp, fp, tn, fn at op.threshold
    img_scores: list[float] = []
    img_labels: list[bool] = []
    img_decisions: list[bool] = []
    skipped: list[tuple[str, str]] = []
    for s in range(0, len(pairs), batch_size):
        ready: list[tuple[LabelledPair, PreparedPair, np.ndarray | None]] = []
        for p in pairs[s : s + batch_size]:
            try:  # the mask too is read before the model runs: a pair is scored whole or skipped whole
                q = prepare_files(p.cur_uri, p.his_uri, size=size, registration=registration, read=read)
                ready.append((p, q, read_mask_file(p.mask_uri, q.native_size, read) if p.mask_uri else None))
            except UnscoredPair as exc:
                skipped.append((p.key, exc.reason))
        if not ready:
            continue
        maps = predictor.predict(np.stack([q.cur for _, q, _ in ready]), np.stack([q.his for _, q, _ in ready])).cpu()
        for (p, q, given), m in zip(ready, maps):
            scored = postprocess(m, q.native_size, op, map_dtype, q.history_weight)
            if on_scored is not None:
                on_scored(p, scored)
            native = scored.native()
            mask = np.zeros(native.shape, bool) if given is None else given
            pm.update(native, mask)
            covered = q.covered_at((native.shape[1], native.shape[0]))
            if covered is None:
                pm_covered.update(native, mask)
            else:
                pm_covered.update(native[covered], mask[covered])
                uncovered[0] += int((~covered).sum())
                uncovered[1] += int((mask & ~covered).sum())
            for i, c in enumerate(confusion_counts(native, mask, op.threshold)):
                at_op[i] += c
            img_scores.append(scored.figures.capture_score)  # the decision-consistent ranking
            img_labels.append(bool(mask.any()))
            img_decisions.append(scored.anomalous)
    if not img_scores:
        raise NothingScored(skipped)
    out: dict[str, Any] = pm.compute()
    op_scores = scores_from_counts(*at_op)
    out.update({f"{k}_at_op": op_scores[k] for k in ("precision", "recall", "f1", "iou")})
    cov = pm_covered.compute() if pm_covered.n_pixels else {}
    out.update({f"{k}_covered": cov.get(k, float("nan")) for k in ("precision", "recall", "f1", "iou", "auc")})
    n_pos = out["tp"] + out["fn"]
    out.update(uncovered_frac=uncovered[0] / pm.n_pixels,
               uncovered_anomalous_frac=uncovered[1] / n_pos if n_pos else float("nan"))
    im = image_metrics(img_scores, img_labels, img_decisions)
    decided = sum(img_decisions)
    hits = decided - im.false_alarms
    out.update(threshold=op.threshold, min_area=op.min_area, image_auroc=im.image_auroc,
               decision_precision=hits / decided if decided else float("nan"), decision_recall=im.recall,
               false_alarms=im.false_alarms, n_samples=len(img_scores), n_anomalous=im.n_anomalous, skipped=skipped,
               image_scores=img_scores, image_labels=img_labels, pixel_hists=(pm.pos_hist, pm.neg_hist))
    return out


def evaluate_model_on_pairs(
    model: torch.nn.Module,
    card: ModelCard,
    pairs: list[LabelledPair],
    *,
    device: str = "cpu",
    fast: bool = True,
    registration: str = "auto",
    batch_size: int = 8,
) -> dict[str, Any]:
    """:func:`evaluate_pairs` of an in-memory model at its card's operating point (what a night would use)."""
    return evaluate_pairs(Predictor(model, device, fast=fast), pairs, resolve_operating_point(card),
                          registration=registration, batch_size=batch_size)
