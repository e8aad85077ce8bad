"""Tests for anodet_core.imaging.registration (synthetic pairs from scikit-image's bundled data)."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from skimage import data, draw
from skimage.transform import resize, warp

from anodet_core.imaging.registration import Registration, register, warp_to_cur

H, W = 300, 480
PAD = 80  # the scene is larger than the captures so that his has no empty border


@functools.cache
def _scene(name: str, seed: int = 0) -> np.ndarray:
    """Textured photograph with drawn bolts (disks), plates (rectangles) and cables (lines)."""
    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = img[..., :3].astype(np.float64) / 255.0
    img = resize(img, (H + 2 * PAD, W + 2 * PAD), anti_aliasing=True)
    rng = np.random.default_rng(seed)
    hh, ww = img.shape[:2]
    for _ in range(6):
        r, c = int(rng.integers(20, hh - 20)), int(rng.integers(20, ww - 20))
        rr, cc = draw.disk((r, c), int(rng.integers(6, 15)), shape=(hh, ww))
        img[rr, cc] = rng.random(3)
        rr, cc = draw.rectangle((r, c), extent=(int(rng.integers(8, 30)), int(rng.integers(20, 60))),
                                shape=(hh, ww))
        img[rr, cc] = rng.random(3)
        rr, cc, val = draw.line_aa(int(rng.integers(0, hh)), int(rng.integers(0, ww)),
                                   int(rng.integers(0, hh)), int(rng.integers(0, ww)))
        keep = (rr < hh) & (cc < ww)
        rr, cc, val = rr[keep], cc[keep], val[keep]
        img[rr, cc] = (1 - val[:, None]) * img[rr, cc] + val[:, None] * 0.1
    img.setflags(write=False)
    return img


def _similarity(shift=(13.4, -9.7), rot_deg=1.5, scale=1.025) -> np.ndarray:
    """cur->his matrix: rotation/scale about the image centre, then shift."""
    c = np.array([(W - 1) / 2.0, (H - 1) / 2.0])
    t = math.radians(rot_deg)
    a = scale * np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    m = np.eye(3)
    m[:2, :2] = a
    m[:2, 2] = c - a @ c + np.asarray(shift, dtype=float)
    return m


def _to_u8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _pair(name="astronaut", m=None, *, gamma=0.8, noise=0.02, seed=0, anomaly=False):
    """(cur, his, true cur->his matrix): his(m @ p) == cur(p) up to gamma/noise/anomaly."""
    scene = _scene(name, seed)
    m = _similarity() if m is None else m
    off = np.array([[1.0, 0.0, PAD], [0.0, 1.0, PAD], [0.0, 0.0, 1.0]])
    scene = scene.copy()  # skimage's warp wants a writable buffer
    cur = warp(scene, off, output_shape=(H, W), order=1)
    his = warp(scene, off @ np.linalg.inv(m), output_shape=(H, W), order=1)
    rng = np.random.default_rng(seed + 100)
    his = np.clip(his, 0.0, 1.0) ** gamma + rng.normal(0.0, noise, his.shape)
    cur = cur + rng.normal(0.0, noise, cur.shape)
    if anomaly:  # bright blob covering ~3 % of the image, only in cur
        rr, cc = draw.disk((120, 300), math.sqrt(0.03 * H * W / math.pi), shape=(H, W))
        cur[rr, cc] = 1.0
    return _to_u8(cur), _to_u8(his), m


CORNERS = np.array([[0.0, 0.0], [W - 1.0, 0.0], [0.0, H - 1.0], [W - 1.0, H - 1.0]])


def _apply(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    p = np.c_[xy, np.ones(len(xy))] @ m.T
    return p[:, :2] / p[:, 2:]


def corner_error(m_est: np.ndarray, m_true: np.ndarray) -> float:
    return float(np.max(np.linalg.norm(_apply(m_est, CORNERS) - _apply(m_true, CORNERS), axis=1)))


# --------------------------------------------------------------------------- #
# Accuracy
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name", ["astronaut", "brick", "camera"])
@pytest.mark.parametrize("method", ["auto", "phase", "features"])
def test_recovers_known_similarity(name, method):
    cur, his, m_true = _pair(name)
    reg = register(cur, his, method=method)
    assert reg.ok
    assert reg.method == ("features" if method == "features" else "phase")
    assert corner_error(reg.matrix, m_true) <= 1.0
    assert reg.ncc_after > reg.ncc_before
    assert math.isfinite(reg.residual_px) and reg.residual_px < 2.0
    if reg.method == "features":
        assert reg.inliers >= 12
    else:
        assert reg.inliers == 0
    assert reg.rotation_deg == pytest.approx(1.5, abs=0.15)
    assert reg.scale == pytest.approx(1.025, abs=0.003)


def test_recovers_larger_motion_auto():
    m_true = _similarity(shift=(-30.0, 22.0), rot_deg=-4.0, scale=0.94)
    cur, his, _ = _pair("gravel", m_true, gamma=1.3, noise=0.03, seed=3)
    reg = register(cur, his)
    assert reg.ok and corner_error(reg.matrix, m_true) <= 1.0


@pytest.mark.parametrize("model", ["translation", "similarity", "affine", "projective"])
def test_models_on_pure_shift(model):
    m_true = _similarity(shift=(-11.3, 7.6), rot_deg=0.0, scale=1.0)
    cur, his, _ = _pair("camera", m_true, seed=1)
    reg = register(cur, his, model=model)
    assert reg.ok
    assert corner_error(reg.matrix, m_true) <= 1.0


def test_features_translation_model():
    m_true = _similarity(shift=(9.0, -5.5), rot_deg=0.0, scale=1.0)
    cur, his, _ = _pair("astronaut", m_true, seed=2)
    reg = register(cur, his, model="translation", method="features")
    assert reg.ok and reg.method == "features"
    assert corner_error(reg.matrix, m_true) <= 1.0


def test_local_anomaly_is_not_aligned_away():
    cur, his, m_true = _pair("astronaut", anomaly=True)
    for method in ("auto", "features"):
        reg = register(cur, his, method=method)
        assert reg.ok
        assert corner_error(reg.matrix, m_true) <= 1.0


def test_grayscale_float_inputs_and_channel_variants():
    cur, his, m_true = _pair("brick", seed=4)
    gray_c = cur.astype(np.float64).mean(axis=2) / 255.0
    gray_h = his.astype(np.float64).mean(axis=2) / 255.0
    assert corner_error(register(gray_c, gray_h).matrix, m_true) <= 1.0
    assert corner_error(register(gray_c[..., None], gray_h[..., None]).matrix, m_true) <= 1.0
    f32 = register(cur.astype(np.float32), his.astype(np.float32))
    assert corner_error(f32.matrix, m_true) <= 1.0


def test_read_only_inputs():
    cur, his, m_true = _pair("camera", seed=8)
    g_c = cur.mean(axis=2).astype(np.float32)
    g_h = his.mean(axis=2).astype(np.float32)
    for a in (cur, his, g_c, g_h):
        a.setflags(write=False)
    reg = register(g_c, g_h, work_size=512)  # no downscale: arrays used as they are
    assert reg.ok and corner_error(reg.matrix, m_true) <= 1.0
    his64 = his.astype(np.float64)
    his64.setflags(write=False)
    out, _ = warp_to_cur(his64, reg, cur.shape[:2])
    assert out.dtype == np.float64


def test_different_shapes_share_top_left_origin():
    cur, his, m_true = _pair("astronaut", seed=5)
    reg = register(cur[:280, :450], his)
    assert reg.ok and corner_error(reg.matrix, m_true) <= 1.0


# --------------------------------------------------------------------------- #
# Degenerate pairs
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("method", ["auto", "phase", "features"])
def test_identical_images_give_identity(method):
    cur, _, _ = _pair("camera")
    reg = register(cur, cur.copy(), method=method)
    assert reg.ok
    assert corner_error(reg.matrix, np.eye(3)) <= 0.1
    assert reg.ncc_before == pytest.approx(1.0)
    assert reg.ncc_after > 0.99


@pytest.mark.parametrize("method", ["auto", "phase", "features"])
def test_noise_vs_unrelated_image_fails_loudly(method):
    """Documented behaviour: pure noise vs an unrelated image is not registrable, so
    the result is the identity with ok=False (never an exception, never a silent
    'ok' transform); ncc_after equals ncc_before and is ~0."""
    cur, _, _ = _pair("astronaut")
    noise = np.random.default_rng(0).integers(0, 256, cur.shape, dtype=np.uint8)
    reg = register(noise, cur, method=method)
    assert not reg.ok
    assert reg.method == "identity"
    np.testing.assert_array_equal(reg.matrix, np.eye(3))
    assert reg.inliers == 0 and math.isnan(reg.residual_px)
    assert abs(reg.ncc_before) < 0.1 and reg.ncc_after == reg.ncc_before


def test_constant_image_fails_loudly():
    cur, _, _ = _pair("camera")
    flat = np.full_like(cur, 128)
    reg = register(flat, cur)
    assert not reg.ok and reg.method == "identity"


# --------------------------------------------------------------------------- #
# warp_to_cur / NCC
# --------------------------------------------------------------------------- #
def test_warp_to_cur_valid_mask_and_values():
    his = (np.random.default_rng(1).random((H, W, 3)) * 255).astype(np.uint8)
    shift = np.array([[1.0, 0.0, 20.0], [0.0, 1.0, -15.0], [0.0, 0.0, 1.0]])  # cur (x,y) -> his (x+20, y-15)
    reg = Registration(shift, "phase", True, 0, 0.1, 0.0, 1.0)
    out, valid = warp_to_cur(his, reg, (H, W))
    assert out.shape == his.shape and out.dtype == np.uint8
    assert valid.shape == (H, W) and valid.dtype == bool
    assert not valid[:15, :].any()  # y - 15 < 0
    assert not valid[:, W - 20:].any()  # x + 20 > W - 1
    assert valid[15:, : W - 20].all()
    np.testing.assert_array_equal(out[15:, : W - 20], his[: H - 15, 20:])
    assert (out[~valid] == 0).all()

    gray = his[..., 0].astype(np.float32)
    out_g, valid_g = warp_to_cur(gray, reg, (H, W), order=0)
    assert out_g.dtype == np.float32 and out_g.shape == (H, W)
    np.testing.assert_array_equal(valid_g, valid)


def test_warp_to_cur_aligns_registered_pair():
    cur, his, m_true = _pair("astronaut", _similarity(shift=(25.0, -18.0), rot_deg=1.0), seed=6)
    reg = register(cur, his)
    assert reg.ok
    assert reg.ncc_after > reg.ncc_before
    out, valid = warp_to_cur(his, reg, cur.shape[:2])
    assert not valid.all() and valid.mean() > 0.8  # his does not cover the whole cur frame
    assert not valid[:, -1].any() or not valid[0, :].any()
    a = cur[valid].astype(float).ravel()
    b = out[valid].astype(float).ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.9
    ident = Registration(np.eye(3), "identity", False, 0, float("nan"), 0.0, 0.0)
    out0, valid0 = warp_to_cur(his, ident, cur.shape[:2])
    assert valid0.all()
    np.testing.assert_array_equal(out0, his)


# --------------------------------------------------------------------------- #
# Registration.scaled
# --------------------------------------------------------------------------- #
def test_scaled_conjugates_by_the_scale():
    cur, his, m_true = _pair("camera", seed=7)
    reg = register(cur, his)
    big = reg.scaled(4.0)
    pts = np.random.default_rng(2).uniform(0, 300, (20, 2))
    np.testing.assert_allclose(big.map_points(4.0 * pts), 4.0 * reg.map_points(pts), atol=1e-9)
    s = np.diag([4.0, 4.0, 1.0])
    np.testing.assert_allclose(big.matrix, s @ reg.matrix @ np.linalg.inv(s), atol=1e-12)
    assert big.residual_px == pytest.approx(4.0 * reg.residual_px)
    assert (big.method, big.ok, big.inliers, big.ncc_before, big.ncc_after) == (
        reg.method, reg.ok, reg.inliers, reg.ncc_before, reg.ncc_after)
    # the scaled matrix is accurate for a 4x larger rendering of the same transform
    assert corner_error(big.matrix, s @ m_true @ np.linalg.inv(s)) / 4.0 <= 1.0
    back = big.scaled(0.25)
    np.testing.assert_allclose(back.matrix, reg.matrix, atol=1e-9)
    with pytest.raises(ValueError):
        reg.scaled(0.0)


def test_registration_is_immutable():
    reg = Registration(np.eye(3), "identity", False, 0, float("nan"), 0.0, 0.0)
    with pytest.raises(ValueError):
        reg.matrix[0, 0] = 2.0
    with pytest.raises(ValueError):
        Registration(np.eye(2), "identity", False, 0, float("nan"), 0.0, 0.0)


# --------------------------------------------------------------------------- #
# Input validation
# --------------------------------------------------------------------------- #
def test_bad_inputs_raise_value_error():
    img = np.zeros((60, 80, 3), np.uint8)
    with pytest.raises(ValueError):
        register(np.zeros((0, 0)), np.zeros((0, 0)))
    with pytest.raises(ValueError):
        register(np.zeros((0, 80, 3)), img)
    with pytest.raises(ValueError):
        register(img, img[..., 0])  # 3 channels vs grayscale
    with pytest.raises(ValueError):
        register(img, np.zeros((60, 80, 4), np.uint8))
    with pytest.raises(ValueError):
        register(img, img, model="homography")
    with pytest.raises(ValueError):
        register(img, img, method="sift")
    with pytest.raises(ValueError):
        register(np.zeros((2, 60, 80, 3)), np.zeros((2, 60, 80, 3)))
    with pytest.raises(ValueError):
        register(np.zeros((8, 8)), np.zeros((8, 8)))
    with pytest.raises(ValueError):
        register(np.array([["a", "b"], ["c", "d"]]), np.array([["a", "b"], ["c", "d"]]))
    ident = Registration(np.eye(3), "identity", False, 0, float("nan"), 0.0, 0.0)
    with pytest.raises(ValueError):
        warp_to_cur(np.zeros((0, 5)), ident, (10, 10))
    with pytest.raises(ValueError):
        warp_to_cur(img, ident, (0, 10))
    with pytest.raises(ValueError):
        warp_to_cur(img, ident, (10, 10), order=7)
