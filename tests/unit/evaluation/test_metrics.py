"""Tests for anodet_core.evaluation.metrics (pixel and image-level metrics)."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from anodet_core.evaluation.metrics import (
    ImageMetrics,
    PixelMetrics,
    auc_from_hist,
    confusion_counts,
    eer,
    eer_from_roc,
    image_decision,
    image_metrics,
    image_score,
    roc_auc,
    roc_curve,
    roc_curve_from_hist,
    scores_from_counts,
)

# A tiny hand-checked 3x4 example.
#   scores                      mask   prediction (> 0.5)   outcome
#   0.9  0.2  0.6  0.1          1 0 0 0    T F T F         TP TN FP TN
#   0.5  0.7  0.3  0.8          1 1 0 0    F T F T         FN TP TN FP   (0.5 is NOT > 0.5)
#   0.0  0.4  0.55 1.0          0 1 0 1    F F T T         TN FN FP TP
# => TP = 3, FP = 3, TN = 4, FN = 2 (12 pixels)
HAND_SCORES = np.array(
    [[0.9, 0.2, 0.6, 0.1], [0.5, 0.7, 0.3, 0.8], [0.0, 0.4, 0.55, 1.0]], dtype=np.float32
)
HAND_MASK = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 0, 1]], dtype=np.uint8)


def test_hand_computed_confusion_counts_and_scores():
    assert confusion_counts(HAND_SCORES, HAND_MASK) == (3, 3, 4, 2)
    assert confusion_counts(HAND_SCORES, HAND_MASK.astype(bool)) == (3, 3, 4, 2)
    assert confusion_counts(HAND_SCORES, HAND_MASK.astype(np.float64)) == (3, 3, 4, 2)
    s = scores_from_counts(3, 3, 4, 2)
    assert s["precision"] == pytest.approx(3 / 6)
    assert s["recall"] == pytest.approx(3 / 5)
    assert s["oa"] == pytest.approx(7 / 12)
    assert s["f1"] == pytest.approx(2 * 0.5 * 0.6 / (0.5 + 0.6))  # = 6/11
    assert s["iou"] == pytest.approx(3 / 8)

    pm = PixelMetrics()
    pm.update(HAND_SCORES, HAND_MASK)
    out = pm.compute()
    assert (out["tp"], out["fp"], out["tn"], out["fn"]) == (3, 3, 4, 2)
    assert all(isinstance(out[k], int) for k in ("tp", "fp", "tn", "fn"))
    for k in ("precision", "recall", "oa", "f1", "iou"):
        assert out[k] == pytest.approx(s[k])
    assert set(out) == {"tp", "fp", "tn", "fn", "precision", "recall", "oa", "f1", "iou", "auc", "eer"}
    assert out["auc"] == pytest.approx(roc_auc(HAND_SCORES, HAND_MASK), abs=1e-12)


def test_strict_threshold_at_exactly_half():
    scores = np.array([0.5, 0.5, np.nextafter(0.5, 1.0)])
    masks = np.array([True, False, True])
    # 0.5 is predicted normal; only the value just above 0.5 is positive.
    assert confusion_counts(scores, masks) == (1, 0, 1, 1)
    assert confusion_counts(scores, masks, threshold=0.4) == (2, 1, 0, 0)
    # mask value exactly 0.5 is normal as well (mask > 0.5)
    assert confusion_counts(np.array([0.9]), np.array([0.5])) == (0, 1, 0, 0)


def test_empty_mask_without_false_positives_is_perfect():
    scores = np.full((4, 4), 0.2)
    masks = np.zeros((4, 4), dtype=bool)
    scores[0, 0] = 0.5  # not > 0.5
    pm = PixelMetrics()
    pm.update(scores, masks)
    out = pm.compute()
    assert (out["tp"], out["fp"], out["tn"], out["fn"]) == (0, 0, 16, 0)
    for k in ("precision", "recall", "f1", "iou", "oa"):
        assert out[k] == 1.0
    assert math.isnan(out["auc"]) and math.isnan(out["eer"])


def test_empty_mask_with_false_positives_scores_zero():
    scores = np.full((4, 4), 0.2)
    scores[1, 1] = scores[2, 3] = 0.9
    masks = np.zeros((4, 4))
    out = scores_from_counts(*confusion_counts(scores, masks))
    assert confusion_counts(scores, masks) == (0, 2, 14, 0)
    assert out["precision"] == 0.0
    assert out["recall"] == 0.0  # 0/0 -> 0.0 because something was predicted
    assert out["f1"] == 0.0
    assert out["iou"] == 0.0
    assert out["oa"] == pytest.approx(14 / 16)


def test_no_predictions_but_anomalies_precision_zero():
    out = scores_from_counts(0, 0, 5, 3)
    assert out == {"precision": 0.0, "recall": 0.0, "oa": 5 / 8, "f1": 0.0, "iou": 0.0}


def test_all_anomalous_mask():
    scores = np.array([[0.9, 0.8], [0.3, 0.6]])
    masks = np.ones((2, 2), dtype=bool)
    pm = PixelMetrics()
    pm.update(scores, masks)
    out = pm.compute()
    assert (out["tp"], out["fp"], out["tn"], out["fn"]) == (3, 0, 0, 1)
    assert out["precision"] == 1.0
    assert out["recall"] == pytest.approx(0.75)
    assert out["oa"] == pytest.approx(0.75)
    assert out["iou"] == pytest.approx(0.75)
    assert out["f1"] == pytest.approx(2 * 0.75 / 1.75)
    assert math.isnan(out["auc"]) and math.isnan(out["eer"])


def test_micro_averaging_differs_from_per_image_mean():
    # Image A: one anomalous pixel, detected; F1_A = 1, IoU_A = 1.
    sa = np.array([[0.9, 0.1], [0.1, 0.1]])
    ma = np.array([[1, 0], [0, 0]])
    # Image B: three anomalous pixels, none detected; F1_B = 0, IoU_B = 0.
    sb = np.array([[0.1, 0.1], [0.1, 0.1]])
    mb = np.array([[1, 1], [1, 0]])
    per_image_f1 = np.mean([scores_from_counts(*confusion_counts(s, m))["f1"] for s, m in ((sa, ma), (sb, mb))])
    assert per_image_f1 == pytest.approx(0.5)

    pm = PixelMetrics()
    pm.update(sa, ma)
    pm.update(sb, mb)
    out = pm.compute()
    # micro: TP=1, FP=0, TN=3+1=4, FN=3 -> P=1, R=1/4, F1=0.4, IoU=1/4
    assert (out["tp"], out["fp"], out["tn"], out["fn"]) == (1, 0, 4, 3)
    assert out["precision"] == 1.0
    assert out["recall"] == pytest.approx(0.25)
    assert out["f1"] == pytest.approx(0.4)
    assert out["iou"] == pytest.approx(0.25)
    assert out["f1"] != pytest.approx(per_image_f1)


def test_streaming_equals_one_shot_and_merge():
    rng = np.random.default_rng(0)
    scores = rng.random((6, 32, 48)).astype(np.float32)
    masks = rng.random((6, 32, 48)) < 0.2
    scores[masks] = np.clip(scores[masks] + 0.3, 0, 1)

    one = PixelMetrics()
    one.update(scores, masks)
    streamed = PixelMetrics()
    for i in range(6):
        streamed.update(scores[i], masks[i])
    a, b = one.compute(), streamed.compute()
    assert a == b
    np.testing.assert_array_equal(one.pos_hist, streamed.pos_hist)
    np.testing.assert_array_equal(one.neg_hist, streamed.neg_hist)
    assert (a["tp"], a["fp"], a["tn"], a["fn"]) == confusion_counts(scores, masks)

    left, right = PixelMetrics(), PixelMetrics()
    left.update(scores[:2], masks[:2])
    right.update(scores[2:], masks[2:])
    merged = pickle.loads(pickle.dumps(left)).merge(right)
    assert merged.compute() == a

    with pytest.raises(ValueError):
        PixelMetrics(bins=128).merge(one)


def test_auc_separable_reversed_and_random():
    neg = np.linspace(0.0, 0.4, 50)
    pos = np.linspace(0.6, 1.0, 50)
    scores = np.r_[neg, pos]
    labels = np.r_[np.zeros(50, bool), np.ones(50, bool)]
    assert roc_auc(scores, labels) == 1.0
    assert roc_auc(1.0 - scores, labels) == 0.0
    pm = PixelMetrics()
    pm.update(scores, labels)
    assert pm.compute()["auc"] == 1.0
    pm_rev = PixelMetrics()
    pm_rev.update(1.0 - scores, labels)
    assert pm_rev.compute()["auc"] == 0.0

    rng = np.random.default_rng(1)
    s = rng.random(200_000)
    y = rng.random(200_000) < 0.5
    assert roc_auc(s, y) == pytest.approx(0.5, abs=0.01)
    pm_rand = PixelMetrics()
    pm_rand.update(s, y)
    out = pm_rand.compute()
    assert out["auc"] == pytest.approx(0.5, abs=0.01)
    assert out["eer"] == pytest.approx(0.5, abs=0.01)


def test_histogram_auc_matches_exact_rank_auc():
    rng = np.random.default_rng(2)
    pos = rng.beta(3, 2, 100_000)
    neg = rng.beta(2, 3, 150_000)
    scores = np.r_[pos, neg]
    labels = np.r_[np.ones(pos.size, bool), np.zeros(neg.size, bool)]
    exact = roc_auc(scores, labels)
    pm = PixelMetrics()
    for chunk in np.array_split(np.arange(scores.size), 7):
        pm.update(scores[chunk], labels[chunk])
    out = pm.compute()
    assert abs(out["auc"] - exact) < 1e-3
    assert abs(out["auc"] - exact) <= pm.auc_error_bound() + 1e-12
    assert pm.auc_error_bound() < 1e-3
    assert abs(out["eer"] - eer(scores, labels)) < 1e-3

    fpr, tpr, thr = pm.roc_curve()
    assert fpr.shape == tpr.shape == thr.shape == (pm.bins + 1,)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.isinf(thr[0]) and np.all(np.diff(thr[1:]) < 0)


def test_eer_perfect_and_hand_cases():
    assert eer([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 0.0
    assert eer([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 1.0
    assert eer([0.3, 0.3, 0.3, 0.3], [0, 1, 0, 1]) == pytest.approx(0.5)
    # pos = {0.9, 0.8, 0.2}, neg = {0.5}
    # ROC points: (0,0) (0,1/3) (0,2/3) (1,2/3) (1,1); FPR=FNR is crossed on the
    # segment (0,2/3)-(1,2/3) where FNR = 1/3 everywhere -> FPR = 1/3.
    scores = [0.9, 0.8, 0.2, 0.5]
    labels = [1, 1, 1, 0]
    fpr, tpr, thr = roc_curve(scores, labels)
    np.testing.assert_allclose(fpr, [0, 0, 0, 1, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(thr, [np.inf, 0.9, 0.8, 0.5, 0.2])
    assert eer(scores, labels) == pytest.approx(1 / 3)
    assert roc_auc(scores, labels) == pytest.approx(2 / 3)
    # pos = {0.9, 0.6, 0.4}, neg = {0.7, 0.5, 0.1}: the curve hits FPR = FNR = 1/3 at a vertex.
    assert eer([0.9, 0.6, 0.4, 0.7, 0.5, 0.1], [1, 1, 1, 0, 0, 0]) == pytest.approx(1 / 3)
    # The histogram path gives the same on these well-separated bins.
    pm = PixelMetrics()
    pm.update(np.array(scores), np.array(labels))
    assert pm.compute()["eer"] == pytest.approx(1 / 3)
    assert pm.compute()["auc"] == pytest.approx(2 / 3)
    perfect = PixelMetrics()
    perfect.update(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]))
    assert perfect.compute()["eer"] == 0.0
    assert eer_from_roc([0, 0, 1], [0, 1, 1]) == 0.0


def test_roc_auc_ties_and_single_class():
    assert roc_auc([0.4] * 6, [0, 1, 0, 1, 1, 0]) == 0.5
    # pairs: (0.5 vs 0.5) = 1/2, the other three pairs are wins -> 3.5 / 4
    assert roc_auc([0.5, 0.9, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.875)
    assert math.isnan(roc_auc([0.1, 0.9], [1, 1]))
    assert math.isnan(roc_auc([0.1, 0.9], [False, False]))
    assert math.isnan(eer([0.1, 0.9], [0, 0]))
    assert math.isnan(auc_from_hist([0, 0], [3, 1]))
    # rank AUC is not restricted to [0, 1] scores
    assert roc_auc([-3.0, 10.0, 250.0], [0, 1, 1]) == 1.0
    pm = PixelMetrics()
    pm.update(np.full(10, 0.7), np.r_[np.zeros(5), np.ones(5)])
    assert pm.compute()["auc"] == 0.5
    assert pm.compute()["eer"] == pytest.approx(0.5)


def test_roc_curve_from_hist_by_hand():
    # 4 bins; pos in bins 3, 2; neg in bins 1, 0
    fpr, tpr, thr = roc_curve_from_hist([0, 0, 1, 1], [1, 1, 0, 0])
    np.testing.assert_allclose(fpr, [0, 0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1, 1])
    np.testing.assert_allclose(thr, [np.inf, 0.75, 0.5, 0.25, 0.0])
    with pytest.raises(ValueError):
        roc_curve_from_hist([0, 0], [1, 1])


def test_image_metrics_by_hand():
    scores = [0.9, 0.2, 0.7, 0.4, 0.8]
    labels = [True, False, True, False, False]
    decisions = [True, False, False, True, True]
    m = image_metrics(scores, labels, decisions)
    assert isinstance(m, ImageMetrics)
    assert m.n_anomalous == 2 and m.n_normal == 3
    assert m.recall == pytest.approx(0.5)  # image 0 detected, image 2 missed
    assert m.false_alarms == 2  # images 3 and 4
    assert m.false_alarm_rate == pytest.approx(2 / 3)
    # pos {0.9, 0.7} vs neg {0.2, 0.4, 0.8}: 0.9 wins 3, 0.7 wins 2 -> 5/6
    assert m.image_auroc == pytest.approx(5 / 6)

    normal_only = image_metrics([0.1, 0.6], [False, False], [False, True])
    assert math.isnan(normal_only.recall) and math.isnan(normal_only.image_auroc)
    assert normal_only.false_alarms == 1 and normal_only.n_anomalous == 0


def test_image_decision_min_area_and_score():
    m = np.zeros((5, 5), dtype=np.float32)
    m[0, 0] = 0.9  # isolated pixel, area 1
    m[2, 2] = 0.8
    m[3, 3] = 0.7  # diagonal neighbour of (2, 2): one 8-connected region of area 2
    assert image_decision(m) is True
    assert image_decision(m, min_area=2) is True
    assert image_decision(m, min_area=3) is False
    assert image_decision(m, threshold=0.85) is True
    assert image_decision(m, threshold=0.95) is False
    assert image_decision(m, threshold=0.75, min_area=2) is False  # (3,3)=0.7 drops out
    # region at exactly the threshold does not count (strict >)
    flat = np.full((3, 3), 0.5)
    assert image_decision(flat) is False
    assert image_decision(np.full((3, 3), 0.6), min_area=9) is True
    assert image_decision(m[None]) is True  # (1, H, W) accepted
    assert image_score(m) == pytest.approx(0.9)


def test_torch_tensors():
    s = torch.from_numpy(HAND_SCORES).to(torch.float16)  # 0.55 etc. stay on the same side of 0.5
    mk = torch.from_numpy(HAND_MASK).bool()
    assert confusion_counts(s, mk) == (3, 3, 4, 2)
    pm = PixelMetrics()
    pm.update(s.unsqueeze(0), mk.unsqueeze(0))
    pm.update(torch.tensor([0.95, 0.05]), torch.tensor([1.0, 0.0]))
    out = pm.compute()
    assert (out["tp"], out["fp"], out["tn"], out["fn"]) == (4, 3, 5, 2)
    assert image_decision(torch.from_numpy(HAND_SCORES), min_area=2) is True
    assert roc_auc(torch.tensor([0.1, 0.9]), torch.tensor([False, True])) == 1.0
    m = image_metrics(torch.tensor([0.3, 0.8]), torch.tensor([0, 1]), torch.tensor([False, True]))
    assert m.recall == 1.0 and m.false_alarms == 0 and m.image_auroc == 1.0


def test_invalid_inputs_raise_value_error():
    ok = np.zeros((2, 2))
    with pytest.raises(ValueError, match="shape mismatch"):
        confusion_counts(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        confusion_counts(np.array([[0.1, np.nan], [0.2, 0.3]]), ok)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        confusion_counts(np.array([[0.1, 1.5], [0.2, 0.3]]), ok)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        confusion_counts(np.array([[0.1, -0.1], [0.2, 0.3]]), ok)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        confusion_counts(np.array([[0.1, np.inf], [0.2, 0.3]]), ok)
    with pytest.raises(ValueError, match="NaN"):
        confusion_counts(ok, np.array([[0.0, np.nan], [1.0, 0.0]]))
    pm = PixelMetrics()
    with pytest.raises(ValueError, match="shape mismatch"):
        pm.update(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        pm.update(torch.tensor([0.2, float("nan")]), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="no pixels"):
        pm.compute()
    with pytest.raises(ValueError):
        PixelMetrics(threshold=1.5)
    with pytest.raises(ValueError):
        PixelMetrics(bins=1)
    with pytest.raises(ValueError):
        scores_from_counts(0, 0, 0, 0)
    with pytest.raises(ValueError):
        scores_from_counts(-1, 0, 3, 0)
    with pytest.raises(ValueError, match="length mismatch"):
        roc_auc([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="length mismatch"):
        image_metrics([0.1, 0.2], [True, False], [True])
    with pytest.raises(ValueError):
        image_decision(np.zeros((2, 2)), min_area=0)
    with pytest.raises(ValueError):
        image_decision(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        image_decision(np.full((2, 2), 2.0))
