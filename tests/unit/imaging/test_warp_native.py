"""The production warp (``preprocess.warp_pil``, Pillow) against the reference (``registration.warp_to_cur``), and
``prepare_pair``'s registration in native cur pixels on a 960x600 pair with a known transform."""

from __future__ import annotations

import functools
import io
import math

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage import data, draw
from skimage.transform import resize, warp

from anodet_core.imaging.prepare import MODEL_SIZE, prepare_pair, warp_pil
from anodet_core.imaging.registration import Registration, warp_to_cur


def _similarity(w: int, h: int, shift: tuple[float, float], rot_deg: float, scale: float) -> np.ndarray:
    """cur -> his: rotation and scale about the image centre, then a shift (pixel centres at integers)."""
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    t = math.radians(rot_deg)
    a = scale * np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    m = np.eye(3)
    m[:2, :2] = a
    m[:2, 2] = c - a @ c + np.asarray(shift, float)
    return m


def _apply(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    p = np.c_[xy, np.ones(len(xy))] @ m.T
    return p[:, :2] / p[:, 2:]


# ------------------------------------------------------------------------------------------ warp_pil vs warp_to_cur

H, W = 200, 300
_PERSPECTIVE = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [2e-4, -1.5e-4, 1.0]])
MATRICES = {
    "similarity": _similarity(W, H, (12.3, -7.6), 3.0, 1.04),  # Pillow's affine transform, his leaves the frame
    "perspective": _similarity(W, H, (5.0, 4.0), -2.0, 0.97) @ _PERSPECTIVE,  # Pillow's perspective transform
    "inside": _similarity(W, H, (0.4, 0.3), 0.5, 0.95),  # the whole frame maps inside his: no mask drawn
}


@functools.cache
def _his() -> np.ndarray:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (25, 38, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(small).resize((W, H), Image.Resampling.BICUBIC))
    return np.clip(img.astype(int) + 60, 0, 255).astype(np.uint8)  # bright: a blend with black would show


@pytest.mark.parametrize("name", list(MATRICES))
def test_warp_pil_equals_warp_to_cur(name):
    m, his = MATRICES[name], _his()
    got, valid = warp_pil(his, m, (H, W))
    ref, ref_valid = warp_to_cur(his, Registration(m, "phase", True, 0, 0.0, 0.0, 0.0), (H, W))
    assert got.shape == ref.shape == (H, W, 3) and got.dtype == np.uint8 and valid.shape == (H, W)
    both = valid & ref_valid
    assert both.mean() > 0.85
    assert np.abs(got.astype(int) - ref.astype(int))[both].max() <= 1  # Pillow's fixed-point bilinear: one level
    # Pillow's mask reaches half a pixel further (pixel edges, not centres): a superset by at most a pixel's rim
    assert not (ref_valid & ~valid).any()
    assert not (valid & ~ndimage.binary_dilation(ref_valid, iterations=2)).any()
    if name == "inside":
        assert valid.all() and ref_valid.all()
    else:
        assert not valid.all()
        # where his is missing nothing is invented: the border cur is filled into is where his is not
        corners = _apply(m, np.array([[0.0, 0.0], [W - 1.0, 0.0], [0.0, H - 1.0], [W - 1.0, H - 1.0]]))
        for (px, py), (x, y) in zip([(0, 0), (W - 1, 0), (0, H - 1), (W - 1, H - 1)], corners):
            inside = 0.5 <= x <= W - 1.5 and 0.5 <= y <= H - 1.5
            outside = x < -1.5 or y < -1.5 or x > W + 0.5 or y > H + 0.5
            assert inside or outside, "pick matrices whose corners are not on his's rim"
            assert valid[py, px] == inside, (name, px, py)


# ------------------------------------------------------------------------------------------ prepare_pair, native px

NW, NH = 960, 600  # native capture size; prepare_pair decodes the JPEGs DCT-reduced to 480x300
PAD = 100


@functools.cache
def _scene() -> np.ndarray:
    img = data.astronaut()[..., :3].astype(np.float64) / 255.0
    img = resize(img, (NH + 2 * PAD, NW + 2 * PAD), anti_aliasing=True)
    rng = np.random.default_rng(3)
    hh, ww = img.shape[:2]
    for _ in range(12):  # bolts and plates: structure everywhere, as on an undercarriage
        r, c = int(rng.integers(20, hh - 20)), int(rng.integers(20, ww - 20))
        rr, cc = draw.disk((r, c), int(rng.integers(8, 25)), shape=(hh, ww))
        img[rr, cc] = rng.random(3)
        rr, cc = draw.rectangle((r, c), extent=(int(rng.integers(10, 50)), int(rng.integers(30, 90))), shape=(hh, ww))
        img[rr, cc] = rng.random(3)
    return img


def _jpeg(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _native_pair(m: np.ndarray) -> tuple[bytes, bytes]:
    """cur and his JPEGs at 960x600 with his(m @ p) == cur(p) for native cur pixels p."""
    off = np.array([[1.0, 0.0, PAD], [0.0, 1.0, PAD], [0.0, 0.0, 1.0]])
    scene = _scene()
    cur = warp(scene, off, output_shape=(NH, NW), order=1)
    his = warp(scene, off @ np.linalg.inv(m), output_shape=(NH, NW), order=1) ** 0.9  # and another exposure
    return _jpeg(cur), _jpeg(his)


GRID = np.array([[x, y] for x in np.linspace(0, NW - 1, 7) for y in np.linspace(0, NH - 1, 5)])


@pytest.mark.parametrize("shift, rot_deg, scale", [((23.0, -14.5), 1.5, 1.0), ((-41.3, 17.8), -2.0, 1.03)])
def test_prepare_pair_registration_is_in_native_cur_pixels(shift, rot_deg, scale):
    m_true = _similarity(NW, NH, shift, rot_deg, scale)
    cur_bytes, his_bytes = _native_pair(m_true)
    prep = prepare_pair(cur_bytes, his_bytes)
    assert prep.native_size == (NW, NH)
    assert prep.cur.shape == prep.his.shape == (MODEL_SIZE, MODEL_SIZE, 3)
    reg = prep.registration
    assert reg.ok and reg.method == "phase"
    err = np.linalg.norm(reg.map_points(GRID) - _apply(m_true, GRID), axis=1)
    assert err.max() <= 0.5, err.max()  # within half a native pixel everywhere in the frame (~0.1 measured)
    assert reg.rotation_deg == pytest.approx(rot_deg, abs=0.1) and reg.scale == pytest.approx(scale, abs=2e-3)
    # his leaves part of the frame: that share is reported, and filled with cur (no difference for the model)
    cover = warp_to_cur(np.ones((NH, NW), np.uint8), Registration(m_true, "phase", True, 0, 0.0, 0.0, 0.0), (NH, NW))[1]
    assert prep.valid_frac == pytest.approx(cover.mean(), abs=0.01) and prep.valid_frac < 0.99
    # the prepared history is aligned with the prepared cur (and was not before the warp)
    cur_g, his_g = prep.cur.astype(float).mean(2), prep.his.astype(float).mean(2)
    unaligned = np.asarray(Image.open(io.BytesIO(his_bytes)).convert("RGB").resize((MODEL_SIZE, MODEL_SIZE)), float).mean(2)
    aligned = np.corrcoef(cur_g.ravel(), his_g.ravel())[0, 1]
    assert aligned > 0.97 and aligned > np.corrcoef(cur_g.ravel(), unaligned.ravel())[0, 1] + 0.1


def test_uncovered_pixels_take_cur_and_the_history_fades_in_without_an_edge():
    from anodet_core.imaging.prepare import FEATHER_FRACTION, fill_uncovered

    h, w = 96, 128
    cur = np.full((h, w, 3), 200, np.uint8)  # a bright night
    warped = np.full((h, w, 3), 60, np.uint8)  # a dark one: the lighting differs by 140 levels
    valid = np.zeros((h, w), bool)
    valid[:, 40:] = True  # the history covers the right part only
    out = fill_uncovered(cur, warped, valid)
    band = max(2.0, FEATHER_FRACTION * w)
    assert (out[~valid] == 200).all()  # no evidence outside the history: no difference there
    deep = int(40 + band + 1)
    assert (out[:, deep:] == 60).all()  # a band's width inside, the history is untouched
    row = out[h // 2, :, 0].astype(int)
    assert (np.diff(row[40:deep + 1]) <= 0).all()  # a monotone ramp from cur to the history
    assert np.abs(np.diff(row)).max() <= 140 / band + 1  # no step anywhere: the edge a hard fill leaves is gone
    hard = np.where(valid[..., None], warped, cur)[h // 2, :, 0].astype(int)
    assert np.abs(np.diff(hard)).max() == 140  # (what the hard fill gave)
