"""The production fast path (``inference.Predictor(fast=True)``: bf16 autocast where the CPU has bf16, channels_last)
against the reference fp32 path, through the Predictor the night uses: maps within bf16's resolution, and the
same decisions and findings through ``scoring.postprocess``."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from anodet_core.models import create_model
from anodet_core.scoring.postprocess import OperatingPoint, postprocess
from anodet_core.scoring.predictor import Predictor, bf16_supported, to_input

SQUARES = [(100, 60, 56), None, (30, 170, 40)]  # (y, x, side) pasted into cur at model size; None: no change
NATIVE = (320, 240)  # (width, height) the maps are stored at


def _pairs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    cur, his = [], []
    for sq in SQUARES:
        small = rng.integers(40, 200, (12, 16, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(small).resize((256, 256), Image.Resampling.BICUBIC))
        c = np.clip(base.astype(int) + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8)
        if sq:
            y, x, s = sq
            c[y : y + s, x : x + s] = (250, 250, 40)
        cur.append(c)
        his.append(base)
    return np.stack(cur), np.stack(his)


def _random_model(preset: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("anodfdnet", preset=preset, **({"pretrained": False} if preset == "base" else {})).eval()


def _both(model: torch.nn.Module) -> tuple[Predictor, Predictor]:
    return Predictor(model, "cpu", fast=False), Predictor(copy.deepcopy(model), "cpu", fast=True)


@pytest.mark.parametrize("preset", ["lite", "base"])
def test_fast_maps_match_fp32(preset):
    ref, fast = _both(_random_model(preset))
    assert (ref.bf16, ref.channels_last) == (False, False)
    assert (fast.bf16, fast.channels_last) == (bf16_supported("cpu"), True)
    cur, his = _pairs()
    a, b = ref.predict(cur, his), fast.predict(cur, his)
    assert a.shape == b.shape == (3, 256, 256) and a.dtype == b.dtype == torch.float32
    assert 0 <= float(b.min()) and float(b.max()) <= 1
    d = (a - b).abs()
    if fast.bf16:  # the sigmoid runs in bf16: 2^-8 steps in [0.5, 1), so up to 2^-9 off, plus what the layers add
        assert float(d.max()) <= 4e-3 and float(d.mean()) <= 2e-3, (float(d.max()), float(d.mean()))
    else:
        assert float(d.max()) <= 1e-5
    # the maps carry the change (random init: small, but in place): the case is not a constant map
    level = a[1].median()  # the no-change pair's map is nearly constant
    for k, sq in enumerate(SQUARES):
        if sq:
            y, x, s = sq
            inside = (a[k, y : y + s, x : x + s] - level).abs().max()
            assert float(inside) > 10 * float((a[1] - level).abs().max()) > 0


class ChangeHead(torch.nn.Module):
    """A hand-made head on the random-init network: the local mean of |logit| (15x15), thresholded softly at
    ``level``; high where the network's features of cur and his differ (the pasted squares)."""

    def __init__(self, net: torch.nn.Module, level: float = 0.0, gain: float = 1.0):
        super().__init__()
        self.net, self.level, self.gain = net, level, gain

    def energy(self, cur: torch.Tensor, his: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.net.forward_logits(cur, his).float().abs(), 15, 1, 7, count_include_pad=False)

    def forward(self, cur: torch.Tensor, his: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gain * (self.energy(cur, his) - self.level))


def test_fast_path_decides_like_fp32():
    cur, his = _pairs()
    head = ChangeHead(_random_model("lite"))
    with torch.inference_mode():  # hand calibration on the fp32 energies: halfway between the no-change pair's
        e = head.energy(to_input(cur, "cpu", False), to_input(his, "cpu", False))[:, 0]  # peak and the squares'
    quiet, loud = float(e[1].max()), min(float(e[0].max()), float(e[2].max()))
    assert loud > 5 * quiet
    head.level, head.gain = (quiet + loud) / 2, 8 / (loud - quiet)
    ref, fast = _both(head)
    a, b = ref.predict(cur, his), fast.predict(cur, his)
    op = OperatingPoint(0.5, 30)
    for k, sq in enumerate(SQUARES):
        sa, sb = postprocess(a[k], NATIVE, op), postprocess(b[k], NATIVE, op)
        assert sa.decision == sb.decision == ("anomalous" if sq else "normal"), k
        assert len(sa.findings) == len(sb.findings) and sa.figures.n_findings == sb.figures.n_findings, k
        assert sa.figures.score_max == pytest.approx(sb.figures.score_max, abs=0.02)
        assert sa.figures.anomalous_area_px == pytest.approx(sb.figures.anomalous_area_px, rel=0.02, abs=5)
        for fa, fb in zip(sa.findings, sb.findings):
            assert max(abs(fa.x0 - fb.x0), abs(fa.y0 - fb.y0), abs(fa.x1 - fb.x1), abs(fa.y1 - fb.y1)) <= 2, (k, fa, fb)
            assert fa.area_px == pytest.approx(fb.area_px, rel=0.02)
        if sq:  # the finding is the square, in native px
            y, x, s = sq
            top = sa.findings[0]
            cx, cy = (x + s / 2) * NATIVE[0] / 256, (y + s / 2) * NATIVE[1] / 256
            assert top.x0 <= cx < top.x1 and top.y0 <= cy < top.y1, (k, top)
