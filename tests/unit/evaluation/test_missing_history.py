"""Pixels without history: a paired map says nothing there, so the one scoring path scores them at the card's
calibrated no-history score instead of "certainly normal" — never lower than the model did, never a finding."""

import numpy as np
import pytest
import torch
from test_evaluate_coverage import DiffMap, shifted_pair  # noqa: F401  (the fixture)

from anodet_core.evaluation.evaluate import evaluate_pairs
from anodet_core.imaging.prepare import history_weight
from anodet_core.scoring.calibration import NO_HISTORY_SCORES, calibrate
from anodet_core.scoring.postprocess import OperatingPoint, postprocess, weigh_missing_history
from anodet_core.scoring.predictor import Predictor
from anodet_core.training import LabelledPair, PairArrays

from helpers import Lookup


def test_history_weight_ramps_from_the_edge_of_the_history():
    valid = np.zeros((64, 128), bool)
    valid[:, :96] = True  # the last 32 columns have no history
    w = history_weight(valid)
    band = 128 / 16
    assert (w[:, 96:] == 0).all() and (w[:, : 96 - int(band) - 1] == 1).all()
    assert 0 < w[0, 92] < 1 and np.all(np.diff(w[0, 80:97]) <= 0)  # falls toward the uncovered side


def test_weighing_keeps_compared_pixels_bit_for_bit_and_never_lowers_a_score():
    rng = np.random.default_rng(0)
    score = torch.from_numpy(rng.uniform(0, 1, (32, 32)).astype(np.float32) ** 6)
    weight = np.ones((32, 32), np.float32)
    weight[:, 24:] = 0.0
    weight[:, 16:24] = np.linspace(1, 0, 10)[1:-1]
    out = weigh_missing_history(score, weight, 0.1)
    assert torch.equal(out[:, :16], score[:, :16])  # w == 1: untouched
    assert torch.all(out >= score - 1e-6)
    assert torch.allclose(out[:, 24:], torch.clamp(score[:, 24:], min=0.1), atol=1e-6)  # w == 0: max(score, level)
    ramp = out[:, 16:24][score[:, 16:24] < 0.01]
    assert ramp.numel() and (ramp < 0.1).all() and (ramp > score[:, 16:24][score[:, 16:24] < 0.01]).all()
    assert weigh_missing_history(score, None, 0.1) is score and weigh_missing_history(score, weight, None) is score


def test_the_no_history_score_never_makes_a_finding():
    assert OperatingPoint(0.3, 4, 0.3).no_history_score is None  # a threshold at or below it (ANODET_THRESHOLD) turns it off
    with pytest.raises(ValueError, match="no-history score"):
        OperatingPoint(0.5, 4, 1.5)
    score = torch.zeros(64, 64)
    weight = np.ones((64, 64), np.float32)
    weight[:, 40:] = 0.0
    plain = postprocess(score, (128, 128), OperatingPoint(0.5, 4))
    weighed = postprocess(score, (128, 128), OperatingPoint(0.5, 4, 0.2), history_weight=weight)
    assert plain.figures.score_max == 0.0 and weighed.figures.score_max == pytest.approx(0.2, abs=1 / 255)
    assert weighed.decision == plain.decision == "normal" and not weighed.findings
    assert weighed.figures.capture_score == pytest.approx(0.2, abs=1 / 255)
    assert weighed.figures.capture_score > plain.figures.capture_score


def test_a_change_without_history_ranks_above_the_compared_normal_pixels(shifted_pair):  # noqa: F811
    pair = LabelledPair("p", shifted_pair["cur.jpg"], shifted_pair["his.jpg"], shifted_pair["mask.png"])
    plain = evaluate_pairs(Predictor(DiffMap(), "cpu", fast=False), [pair], OperatingPoint(0.5, 16))
    weighed = evaluate_pairs(Predictor(DiffMap(), "cpu", fast=False), [pair], OperatingPoint(0.5, 16, 0.1))
    assert weighed["auc"] > plain["auc"] + 0.05  # the square the history never saw is no longer "certainly normal"
    for k in ("precision", "recall", "f1", "iou", "decision_recall", "f1_covered"):  # decisions do not move
        assert weighed[k] == plain[k], k
    assert weighed["auc_covered"] == pytest.approx(plain["auc_covered"], abs=0.01)


def _split(n: int, side: int, uncovered_change: bool):
    """Maps of a perfect change detector on covered pixels (0.9 on the change, 0.001 elsewhere) whose last
    quarter of columns has no history; the uncovered change (when there) scores 0.001 like the background."""
    rng = np.random.default_rng(1)
    maps = np.full((n, side, side), 0.001, np.float32)
    masks = np.zeros((n, side, side), np.uint8)
    weight = np.full((n, side, side), 255, np.uint8)
    weight[:, :, 3 * side // 4 :] = 0
    for i in range(n):
        y, x = rng.integers(0, side // 2, 2)
        maps[i, y : y + 4, x : x + 4] = 0.9 * rng.uniform(0.2, 1)  # some found changes rank below 0.5
        masks[i, y : y + 4, x : x + 4] = 1
        if uncovered_change:
            masks[i, y : y + 4, side - 6 : side - 2] = 1
    maps[:, :, : 3 * side // 4] += rng.uniform(0, 0.05, (n, side, 3 * side // 4)).astype(np.float32)
    cur = np.zeros((n, side, side, 3), np.uint8)
    his = np.zeros_like(cur)
    his[:, 0, 0, 0] = np.arange(n)
    data = PairArrays([f"p{i}" for i in range(n)], cur, his, masks, sizes=[(side, side)] * n, history_weight=weight)
    return Lookup(maps), data


def test_calibration_chooses_a_no_history_score_only_when_it_ranks_pixels_better():
    model, val = _split(12, 32, uncovered_change=True)
    cal = calibrate(model, val)
    assert cal.no_history_score in NO_HISTORY_SCORES and cal.no_history_score < cal.threshold
    model, val = _split(12, 32, uncovered_change=False)  # nothing is ever missed there: scoring it up only costs
    assert calibrate(model, val).no_history_score is None
    val.history_weight = None  # no coverage known: nothing to choose
    assert calibrate(model, val).no_history_score is None
