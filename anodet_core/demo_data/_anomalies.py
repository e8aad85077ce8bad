"""Anomalies pasted into a region's canonical scene: the dispatch, and the scratches and oil leaks.

In ``anomaly_rate`` of the captures (exactly ``round(rate * n)``, types balanced to +-1, a quarter of them *subtle*;
seeded by ``(seed, night, train, car, region)``):

* ``foreign_body`` (:mod:`._foreign`): a shaded, textured object of 40-250 px (log-uniform) with a drop shadow;
* ``missing_component`` (:mod:`._missing`): the scene re-rendered without one removable part group;
* ``scratch``: one to four thin (1-3 px) jittered polylines of 60-400 px, bright (bare metal) or dark, fading along
  their length; subtle ones at 25-40 % strength. Mask: the drawn lines dilated by 2-4 px.
* ``oil_leak``: a dark, glossy, soft-edged irregular stain of radius 45-220 px with optional drips (fractal noise
  thresholded in an elliptic envelope, blurred edge, specular highlights from its thickness); subtle ones darken by
  only 22-38 %. Mask: stain alpha > 0.5.

Anomalies are drawn in the canonical frame at a point chosen in the cur frame (so they are in view), before the
nuisances: they are warped, lit and noised like the rest of the scene. Each drawer returns the canonical-frame
window it repainted: ``((x0, y0), uint8 pixels, boolean mask)`` or None when it could not draw.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

from ._constants import _F32
from ._foreign import _foreign
from ._geometry import _disk, _patch_window, _seg_dist
from ._missing import _missing
from ._nuisance import _warp_mask
from ._raster import _draw_polyline_alpha
from ._shading import _to_u8, shade
from ._textures import _fbm, _resize_f, _smoothstep

if TYPE_CHECKING:
    from ._scene import RegionScene


def _draw_anomaly(
    scene: RegionScene, rng: np.random.Generator, kind: str, subtle: bool, data: tuple[float, ...]
) -> tuple[str | None, np.ndarray, np.ndarray | None]:
    """Draw ``kind`` (falling back to a foreign body): (type drawn, canonical scene copy, cur-frame mask)."""
    a, b, c, d, e, f = data
    W, H, k = scene.W, scene.H, scene.k

    def pick(size):  # a canonical-frame point whose neighbourhood of ``size`` is in the cur view
        pad = min(size / 2 + 6 * k + 2, W / 2 - 1, H / 2 - 1)
        px, py = rng.uniform(pad, W - pad), rng.uniform(pad, H - pad)
        return a * px + b * py + c, d * px + e * py + f

    min_px = max(6, int(40 * k * k))
    for attempt in range(6):
        want = kind if attempt < 4 else "foreign_body"
        if want == "missing_component":
            res = _missing(scene, rng, subtle, data)
        elif want == "scratch":
            res = _scratch(scene, rng, subtle, pick)
        elif want == "oil_leak":
            res = _oil(scene, rng, subtle, pick)
        else:
            res = _foreign(scene, rng, subtle, pick)
        if res is None:
            continue
        (x0, y0), pix, m = res
        mask = _warp_mask(m, x0, y0, data, W, H, scene.m)
        if int(np.count_nonzero(mask)) >= min_px:
            out = scene.scene.copy()
            out[y0 : y0 + pix.shape[0], x0 : x0 + pix.shape[1]] = pix
            return want, out, mask
    return None, scene.scene, None  # pragma: no cover - practically unreachable


def _scratch(scene: RegionScene, rng, subtle, pick):
    """One to four jittered, fading lines of bare metal or gouged grime."""
    k = scene.k
    L = math.exp(rng.uniform(math.log(60), math.log(400))) * k
    n = int(rng.integers(1, 5))
    phi = rng.uniform(0, math.pi)
    P = int(L * 1.4 + 60 * k + 8)
    cx, cy = pick(L * 0.9)
    x0, y0 = int(cx - P / 2), int(cy - P / 2)
    raw = np.zeros((P, P), _F32)
    spread = rng.uniform(8, 40) * k
    width = rng.uniform(0.8, 2.8) * k + 0.35
    for _ in range(n):
        Li = L * rng.uniform(0.5, 1.0)
        off = rng.uniform(-1, 1) * spread
        start = np.array([P / 2, P / 2]) + off * np.array([-math.sin(phi), math.cos(phi)]) - Li / 2 * np.array([math.cos(phi), math.sin(phi)])
        steps = 14
        ang = phi + np.cumsum(rng.normal(0, math.radians(3), steps)) + np.linspace(0, rng.normal(0, 0.15), steps)
        pts = start + np.concatenate([[[0, 0]], np.cumsum(np.stack([np.cos(ang), np.sin(ang)], 1) * (Li / steps), 0)])
        raw = np.maximum(raw, _draw_polyline_alpha(pts, P, P, width * rng.uniform(0.7, 1.2)))
    if raw.max() < 0.3:
        return None
    fade = 0.35 + 0.65 * _smoothstep(-1.2, 0.8, _fbm(rng, P, P, max(L / 3, 4), octaves=2))
    strength = rng.uniform(0.25, 0.4) if subtle else rng.uniform(0.55, 0.95)
    al = raw * fade * strength
    pw = _patch_window(x0, y0, P, P, scene.Wc, scene.Hc)
    if pw is None:
        return None
    win, (dy, dx), (py, px) = pw
    dst = scene.scene[win[1] : win[3], win[0] : win[2]].astype(_F32)
    a = al[py, px][..., None]
    if rng.random() < 0.65:  # bright: bare metal
        metal = rng.uniform(170, 215) * np.array([0.97, 0.99, 1.02], _F32)
        dst[dy, dx] += (metal - dst[dy, dx]) * a
    else:  # dark: a gouge in the grime
        dst[dy, dx] *= 1 - 0.65 * a
    rd = max(1, int(round(rng.uniform(2, 4) * k)))
    m = ndi.binary_dilation(raw > 0.2, structure=_disk(rd))[py, px]
    return (win[0], win[1]), _to_u8(dst), m


def _oil(scene: RegionScene, rng, subtle, pick):
    """A dark, glossy, soft-edged stain with optional drips."""
    k = scene.k
    R = max(math.exp(rng.uniform(math.log(45), math.log(220))) * k, 6.0)
    P = int(4.6 * R) + 8
    aspect, ang = rng.uniform(0.5, 1.0), rng.uniform(0, math.pi)
    cx, cy = pick(2.2 * R)
    x0, y0 = int(cx - P / 2), int(cy - P / 2)
    q = max(1.0, R / 50)  # the stain is smooth: build its fields at ~50 px radius, then upsample
    Pl = max(8, int(math.ceil(P / q)))
    xs = (np.arange(Pl, dtype=_F32)[None, :] + 0.5) * (P / Pl) - P / 2
    ys = (np.arange(Pl, dtype=_F32)[:, None] + 0.5) * (P / Pl) - P / 2
    u, v = xs * math.cos(ang) + ys * math.sin(ang), -xs * math.sin(ang) + ys * math.cos(ang)
    f = 1 - (u / R) ** 2 - (v / (R * aspect)) ** 2 + 0.45 * _fbm(rng, Pl, Pl, R * 0.6 / q, octaves=3)
    if rng.random() < 0.5:  # drips, mostly "down" the image
        dphi = math.pi / 2 + rng.normal(0, 0.4)
        for _ in range(int(rng.integers(1, 5))):
            sx, sy = rng.uniform(-0.5, 0.5, 2) * R
            Ld, wd = R * rng.uniform(0.5, 1.2), R * rng.uniform(0.06, 0.14)
            dd = _seg_dist(xs, ys, sx, sy, sx + Ld * math.cos(dphi), sy + Ld * math.sin(dphi))
            f = np.maximum(f, 1 - (dd / wd) ** 2)
    a0 = _smoothstep(0.0, 0.25, f).astype(_F32)
    sig = rng.uniform(1.0, 3.5) * k + 0.5
    alpha = _resize_f(ndi.gaussian_filter(a0, sig / q), P, P)
    if alpha.max() < 0.6:
        return None
    thick = _resize_f(ndi.gaussian_filter(a0, (sig * 2 + 1) / q), P, P) * R * rng.uniform(0.05, 0.12)
    D = rng.uniform(0.22, 0.38) if subtle else rng.uniform(0.55, 0.85)
    oil = np.array([20, 16, 10], _F32) * rng.uniform(0.8, 1.6)
    gl, shin = rng.uniform(0.1, 0.35) * (0.5 if subtle else 1.0), rng.uniform(40, 150)
    pw = _patch_window(x0, y0, P, P, scene.Wc, scene.Hc)
    if pw is None:
        return None
    win, (dy, dx), (py, px) = pw
    dst = scene.scene[win[1] : win[3], win[0] : win[2]].astype(_F32)
    al = alpha[py, px][..., None]
    dst[dy, dx] = dst[dy, dx] * (1 - al * D) + oil * (al * D)
    dst[dy, dx] *= 1 - 0.6 * al * (1 - al)  # darker wet rim
    gloss = shade(thick[py, px], np.zeros(al.shape[:2] + (3,), _F32), scene.light, scene.half, scene.amb, gl, shin)
    dst[dy, dx] += gloss * al
    return (win[0], win[1]), _to_u8(dst), alpha[py, px] > 0.5
