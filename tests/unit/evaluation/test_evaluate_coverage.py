"""Pixel figures over the pixels the registered history covers: a change where cur has no history is counted
in the paper's all-pixel figures and left out of the ``*_covered`` ones, and the split says how much that is."""

import numpy as np
import pytest
import torch
from PIL import Image

from anodet_core.evaluation.evaluate import evaluate_pairs
from anodet_core.imaging.io import encode_png
from anodet_core.imaging.prepare import prepare_pair
from anodet_core.scoring.postprocess import OperatingPoint
from anodet_core.scoring.predictor import Predictor
from anodet_core.training import LabelledPair

from helpers import jpeg

W, H, SHIFT = 320, 240, 48  # his sees the world 48 px to the left of cur: cur's right 48 columns have no history


class DiffMap(torch.nn.Module):
    """1 where cur and his differ by more than ~45 grey levels (channel mean), 0 below ~25."""

    def forward(self, cur: torch.Tensor, his: torch.Tensor) -> torch.Tensor:
        return (((cur - his).abs().mean(1, keepdim=True) - 0.2) * 4).clamp(0, 1)


def _world(seed: int) -> np.ndarray:
    small = np.random.default_rng(seed).integers(30, 200, (15, 23, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((W + SHIFT, H), Image.Resampling.BICUBIC))


@pytest.fixture
def shifted_pair(tmp_path):
    """cur = world[:, SHIFT:], his = world[:, :W]; two 30x30 bright squares in cur, one in the columns his never
    saw, one in the middle."""
    world = _world(3)
    cur, his = world[:, SHIFT:].copy(), world[:, :W].copy()
    mask = np.zeros((H, W), np.uint8)
    for y, x in ((100, W - 40), (60, 120)):  # the first lies in the last 48 columns
        cur[y : y + 30, x : x + 30] = 250
        mask[y : y + 30, x : x + 30] = 255
    paths = {}
    for name, data in (("cur.jpg", jpeg(cur)), ("his.jpg", jpeg(his)), ("mask.png", encode_png(mask))):
        (tmp_path / name).write_bytes(data)
        paths[name] = str(tmp_path / name)
    return paths


def test_prepare_marks_the_pixels_the_history_does_not_cover(shifted_pair):
    with open(shifted_pair["cur.jpg"], "rb") as c, open(shifted_pair["his.jpg"], "rb") as h:
        q = prepare_pair(c.read(), h.read(), size=256)
    assert abs(q.registration.matrix[0, 2] - SHIFT) < 3  # the shift was found: cur x maps to his x + 48
    covered = q.covered_at((W, H))
    assert covered is not None and covered.shape == (H, W)
    assert abs(q.valid_frac - (W - SHIFT) / W) < 0.02
    assert covered[:, : W - SHIFT - 4].all() and not covered[:, W - SHIFT + 4 :].any()


def test_a_change_without_history_counts_in_all_pixels_only(shifted_pair):
    pair = LabelledPair("p", shifted_pair["cur.jpg"], shifted_pair["his.jpg"], shifted_pair["mask.png"])
    out = evaluate_pairs(Predictor(DiffMap(), "cpu", fast=False), [pair], OperatingPoint(0.5, 16))
    # the square in the uncovered columns is invisible (cur fills in there); the other one is found
    assert 0.4 < out["recall"] < 0.6
    assert out["recall_covered"] > 0.9 and out["f1_covered"] > 0.85 > out["f1"]
    assert out["auc_covered"] > out["auc"]
    assert out["uncovered_anomalous_frac"] == pytest.approx(0.5, abs=0.05)
    assert out["uncovered_frac"] == pytest.approx(SHIFT / W, abs=0.02)


def test_a_fully_covered_split_has_the_same_figures_both_ways(shifted_pair, tmp_path):
    world = _world(3)[:, :W]
    cur = world.copy()
    cur[60:90, 120:150] = 250
    (tmp_path / "cur2.jpg").write_bytes(jpeg(cur))
    (tmp_path / "his2.jpg").write_bytes(jpeg(world))
    pair = LabelledPair("q", str(tmp_path / "cur2.jpg"), str(tmp_path / "his2.jpg"), shifted_pair["mask.png"])
    out = evaluate_pairs(Predictor(DiffMap(), "cpu", fast=False), [pair], OperatingPoint(0.5, 16))
    assert out["uncovered_frac"] == 0.0 and out["uncovered_anomalous_frac"] == 0.0
    assert (out["f1_covered"], out["auc_covered"]) == (out["f1"], out["auc"])
