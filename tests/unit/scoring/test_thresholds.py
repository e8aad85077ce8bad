"""Chosen thresholds against brute-force oracles: ``PixelMetrics.best_f1_threshold`` and the operating threshold
that ``calibration.calibrate`` writes into a card (0.5 unless validation F1 is clearly better in [0.25, 0.75])."""

from __future__ import annotations

import numpy as np
import pytest

from anodet_core.evaluation.metrics import PixelMetrics
from anodet_core.scoring.calibration import calibrate
from anodet_core.training import PairArrays

from helpers import Lookup


def _f1(scores: np.ndarray, truth: np.ndarray, t: float) -> float:
    pred = scores > t
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def _brute_best_f1(scores: np.ndarray, truth: np.ndarray, lo: float = -1.0, hi: float = 2.0) -> float:
    """max F1(score > t) over t in [lo, hi]: F1 only changes at score values, so those and lo are every case."""
    cands = [lo] + [float(s) for s in np.unique(scores) if lo <= s <= hi]
    return max(_f1(scores, truth, t) for t in cands)


def _in_bin(x: float, bins: int = 4096) -> float:
    """``x`` moved to a quarter of its histogram bin: the half-bin threshold then separates neighbouring bins
    exactly (scores in the upper half of a bin are only resolved to 1/bins, as documented)."""
    return (np.floor(x * bins) + 0.25) / bins


# ------------------------------------------------------------------------------------------ best_f1_threshold


def test_best_f1_threshold_on_a_hand_computed_example():
    # 8 bins of 1/8. scores (bin): positives 0.95 (7), 0.70 (5), 0.40 (3); negatives 0.80 (6), 0.30 (2), 0.05 (0)
    # F1 = 2TP / (2TP + FP + FN) when predicting bins >= b:
    #   b = 7: TP1 FP0 FN2 -> 2/4 = 0.5;  b = 6: TP1 FP1 FN2 -> 2/5 = 0.4;  b = 4, 5: TP2 FP1 FN1 -> 4/6 = 0.667
    #   b = 3: TP3 FP1 FN0 -> 6/7 = 0.857 (best);  b = 1, 2: TP3 FP2 -> 6/8 = 0.75;  b = 0: TP3 FP3 -> 6/9 = 0.667
    pm = PixelMetrics(bins=8)
    pm.update(np.array([0.95, 0.70, 0.40, 0.80, 0.30, 0.05]), np.array([1, 1, 1, 0, 0, 0]))
    thr, f1 = pm.best_f1_threshold()
    assert f1 == pytest.approx(6 / 7)
    assert thr == pytest.approx((3 - 0.5) / 8)  # half a bin below the edge of bin 3: 0.3125
    assert PixelMetrics(bins=8).best_f1_threshold() == (0.5, 0.0)  # no positives
    only_neg = PixelMetrics(bins=8)
    only_neg.update(np.array([0.2, 0.9]), np.array([0, 0]))
    assert only_neg.best_f1_threshold() == (0.5, 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_f1_threshold_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    bins = 64
    truth = rng.random(3000) < 0.2
    raw = np.clip(np.where(truth, rng.normal(0.62, 0.15, truth.size), rng.normal(0.38, 0.15, truth.size)), 0, 0.999)
    scores = (np.floor(raw * bins) + 0.25) / bins  # a quarter into each bin: every bin edge is a real threshold
    pm = PixelMetrics(threshold=0.5, bins=bins)
    for part in np.array_split(np.arange(truth.size), 7):  # streamed in batches, as the trainer does
        pm.update(scores[part].reshape(-1, 1), truth[part].reshape(-1, 1))
    thr, f1 = pm.best_f1_threshold()
    best = _brute_best_f1(scores, truth)
    assert f1 == pytest.approx(best, abs=1e-12)
    assert _f1(scores, truth, thr) == pytest.approx(f1, abs=1e-12)  # the threshold reproduces the F1 it claims
    assert 0.0 < thr < 1.0 and _f1(scores, truth, 0.5) < best  # the case does move off 0.5


# ------------------------------------------------------------------------------------------ calibrate


def _val(maps: np.ndarray, masks: np.ndarray) -> tuple[Lookup, PairArrays]:
    n, h, w = maps.shape
    cur = np.zeros((n, h, w, 3), np.uint8)
    his = np.zeros_like(cur)
    his[:, 0, 0, 0] = np.arange(n)
    return Lookup(maps), PairArrays([f"p{i}" for i in range(n)], cur, his, masks.astype(np.uint8),
                                    sizes=[(4 * w, 4 * h)] * n)


def _case(pos: list[tuple[float, int]], neg: list[tuple[float, int]], n: int = 4, side: int = 16):
    """Maps whose pixels take the given (score, count) values, positives (mask 1) and negatives spread over n maps."""
    vals, lab = [], []
    for group, label in ((pos, 1), (neg, 0)):
        for s, count in group:
            vals += [_in_bin(s)] * count
            lab += [label] * count
    total = n * side * side
    assert len(vals) <= total
    vals += [_in_bin(0.02)] * (total - len(vals))  # the rest: clear negatives
    lab += [0] * (total - len(lab))
    order = np.random.default_rng(0).permutation(total)
    return (np.asarray(vals, np.float64)[order].reshape(n, side, side),
            np.asarray(lab, bool)[order].reshape(n, side, side))


def _check_in_range_optimum(maps, masks, cal):
    truth = masks.astype(bool)
    best_in_range = _brute_best_f1(maps, truth, 0.25, 0.75)
    assert 0.25 <= cal.threshold <= 0.75
    assert _f1(maps, truth, cal.threshold) == pytest.approx(best_in_range, abs=1e-9)
    assert cal.pixel_f1 == pytest.approx(best_in_range, abs=1e-9)
    assert cal.pixel_f1_at_05 == pytest.approx(_f1(maps, truth, 0.5), abs=1e-9)


def test_calibrated_threshold_is_the_best_validation_f1_in_range():
    # anomalies score 0.40-0.45 (below the paper's 0.5); normal structure up to 0.33
    maps, masks = _case(pos=[(0.42, 60), (0.45, 30), (0.36, 10)], neg=[(0.33, 40), (0.30, 80), (0.40, 5)])
    model, val = _val(maps, masks)
    cal = calibrate(model, val)
    _check_in_range_optimum(maps, masks, cal)
    assert cal.threshold != 0.5 and cal.pixel_f1 > cal.pixel_f1_at_05 + 0.02
    assert _in_bin(0.33) < cal.threshold < _in_bin(0.36)  # the optimum: keep every positive, drop the 0.33 structure


def test_calibrated_threshold_clamps_to_the_range_when_the_optimum_is_above_it():
    # positives 0.9, normal pixels up to 0.85: F1 keeps rising up to 0.85, so 0.75 is the best threshold in range
    maps, masks = _case(pos=[(0.9, 50)], neg=[(0.85, 20), (0.7, 60), (0.6, 60)])
    model, val = _val(maps, masks)
    cal = calibrate(model, val)
    assert cal.threshold == 0.75
    _check_in_range_optimum(maps, masks, cal)


def test_threshold_stays_05_without_a_clear_gain():
    # at 0.5: TP 100 FP 2 -> F1 0.990; the best in range drops those 2 (F1 1.0): a gain of 0.01 < 0.02
    maps, masks = _case(pos=[(0.8, 100)], neg=[(0.52, 2), (0.3, 50)])
    model, val = _val(maps, masks)
    cal = calibrate(model, val)
    assert _brute_best_f1(maps, masks.astype(bool), 0.25, 0.75) - _f1(maps, masks.astype(bool), 0.5) < 0.02
    assert cal.threshold == 0.5 and cal.pixel_f1 == cal.pixel_f1_at_05
    # without any anomalous pixel in validation there is nothing to calibrate on
    maps, masks = _case(pos=[], neg=[(0.3, 50), (0.6, 3)])
    cal = calibrate(*_val(maps, masks))
    assert cal.threshold == 0.5


def test_calibrated_threshold_never_worse_than_05_when_the_optimum_is_outside_the_range():
    # at 0.5: TP 15 FP 10 FN 0 -> F1 0.75; at 0.75: TP 10 FP 10 FN 5 -> 0.571; at 0.85: TP 10 FP 0 FN 5 -> 0.8
    maps, masks = _case(pos=[(0.95, 10), (0.6, 5)], neg=[(0.8, 10)])
    model, val = _val(maps, masks)
    cal = calibrate(model, val)
    _check_in_range_optimum(maps, masks, cal)
    assert cal.threshold == 0.5
