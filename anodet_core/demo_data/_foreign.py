"""Foreign bodies: a stone, a rag, a (translucent) plastic bottle, a piece of wire, a loose bolt or paper.

A shaded, textured object of 40-250 px (log-uniform) with a drop shadow; subtle ones are blended 40-60 % toward the
local background colour. Mask: object alpha > 0.5 (not its cast shadow).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi

from ._constants import _BOLT_COLORS, _F32, _PRIMARY_TEXTURES, _SECONDARY_TEXTURES, FOREIGN_KINDS
from ._geometry import _bezier, _patch_window, _polyline_dist
from ._raster import _poly_alpha, _rotate_f
from ._shading import _composite, _or_mask, _Part, _shadow, _to_u8, shade
from ._textures import _fbm, _smoothstep, _tex_field

if TYPE_CHECKING:
    from ._scene import RegionScene


def _foreign(scene: RegionScene, rng, subtle, pick):
    """A random foreign object, rotated, shaded and shadowed, at a point ``pick`` chooses."""
    k = scene.k
    kind = str(rng.choice(FOREIGN_KINDS, p=[0.24, 0.18, 0.14, 0.2, 0.12, 0.12]))
    S = max(math.exp(rng.uniform(math.log(40), math.log(250))) * k, 8.0)
    alpha, height, alb, spec, shin, obj_h = _foreign_object(rng, kind, S, k)
    ang = rng.uniform(0, 360)
    alpha, height = _rotate_f(alpha, ang), _rotate_f(height, ang)
    alb = np.stack([_rotate_f(alb[..., i], ang) for i in range(3)], -1)
    h, w = alpha.shape
    cx, cy = pick(max(h, w) * 0.8)
    x0, y0 = int(round(cx - w / 2)), int(round(cy - h / 2))
    rgb = shade(height, alb, scene.light, scene.half, scene.amb, spec, shin)
    sh, sx0, sy0 = _shadow(alpha, x0, y0, obj_h, scene.light, rng.uniform(0.3, 0.5))
    pw = _patch_window(min(x0, sx0), min(y0, sy0), max(y0 + h, sy0 + sh.shape[0]) - min(y0, sy0),
                       max(x0 + w, sx0 + sh.shape[1]) - min(x0, sx0), scene.Wc, scene.Hc)
    if pw is None:
        return None
    win = pw[0]
    dst = scene.scene[win[1] : win[3], win[0] : win[2]].astype(_F32)
    if subtle:
        rgb = rgb + (dst.reshape(-1, 3).mean(0) - rgb) * rng.uniform(0.4, 0.6)
    _composite(dst, win, _Part(kind, x0, y0, rgb, alpha, sh, sx0, sy0))
    m = np.zeros(dst.shape[:2], bool)
    _or_mask(m, alpha > 0.5, x0 - win[0], y0 - win[1])
    return (win[0], win[1]), _to_u8(dst), m


def _foreign_object(rng, kind: str, S: float, k: float):
    """Unrotated foreign object of size ~S: (alpha, height, albedo (h,w,3), spec, shininess, object height)."""
    P = int(S * 1.25) + 8
    xs = np.arange(P, dtype=_F32)[None, :] + 0.5 - P / 2
    ys = np.arange(P, dtype=_F32)[:, None] + 0.5 - P / 2
    ones = np.ones((P, P), _F32)

    def tex(amp, scale, names=None):
        name = str(rng.choice(names or (_PRIMARY_TEXTURES + _SECONDARY_TEXTURES)))
        return np.maximum(1 + amp * _tex_field(rng, name, P, P, scale * k * rng.uniform(0.6, 1.5)), 0.2)

    if kind == "stone":
        n = int(rng.integers(9, 16))
        th = np.sort(rng.uniform(0, 2 * math.pi, n))
        asp = rng.uniform(0.55, 1.0)
        rad = S / 2 * (1 + 0.18 * rng.standard_normal(n)).clip(0.6, 1.4)
        poly = [(P / 2 + r * math.cos(t), P / 2 + r * asp * math.sin(t)) for r, t in zip(rad, th)]
        alpha = _poly_alpha(poly, P)
        dist = ndi.distance_transform_edt(alpha > 0.5)
        dn = dist / max(dist.max(), 1)
        height = (S * rng.uniform(0.15, 0.3) * np.sqrt(dn * (2 - dn)) + S * 0.02 * _fbm(rng, P, P, max(S / 6, 3), 2)).astype(_F32)
        col: Any = [(120, 115, 105), (140, 120, 95), (90, 88, 85), (165, 155, 140), (105, 90, 75)][int(rng.integers(5))]
        alb = np.array(col, _F32) * rng.uniform(0.85, 1.15) * tex(0.25, 0.6, ("gravel", "brick", "moon"))[..., None]
        return alpha, height * alpha, alb, rng.uniform(0.05, 0.2), 12.0, S * 0.15
    if kind == "rag":
        env = 1 - (xs / (S / 2)) ** 2 - (ys / (S / 2 * rng.uniform(0.5, 1.0))) ** 2
        fld = env + 0.6 * _fbm(rng, P, P, max(S / 3, 3), 3)
        alpha = ndi.gaussian_filter(_smoothstep(0.0, 0.12, fld).astype(_F32), 0.7)
        fa = rng.uniform(0, math.pi)
        folds = np.sin((xs * math.cos(fa) + ys * math.sin(fa)) / (S * rng.uniform(0.08, 0.18)) * 2 * math.pi + 2 * _fbm(rng, P, P, max(S / 4, 3), 2))
        height = (S * 0.03 * folds + S * 0.05 * _fbm(rng, P, P, max(S / 5, 3), 2) + S * 0.06) * alpha
        col = [(170, 165, 150), (60, 80, 120), (130, 50, 40), (190, 110, 40), (110, 110, 105), (150, 150, 80)][int(rng.integers(6))]
        dirt = np.exp(0.35 * _fbm(rng, P, P, max(S / 4, 3), 3))
        weave = 1 + 0.06 * rng.standard_normal((P, P)).astype(_F32)
        alb = np.array(col, _F32) * rng.uniform(0.6, 1.0) * (weave / dirt)[..., None]
        return alpha, height.astype(_F32), alb.astype(_F32), 0.03, 8.0, S * 0.08
    if kind == "bottle":
        L, rb = S, S * rng.uniform(0.14, 0.2)
        x = xs + L / 2  # 0 .. L along the axis
        t = x / L
        rad = np.where(t < 0.66, rb, np.where(t < 0.8, rb + (0.42 * rb - rb) * (t - 0.66) / 0.14, 0.42 * rb))
        rad = np.where(t > 0.93, 0.5 * rb, rad)
        inside = np.clip(np.minimum(x, L - x) + 0.5, 0, 1)
        rad = np.broadcast_to(rad, (P, P))
        sd = np.abs(ys) - rad
        cover = np.clip(0.5 - sd, 0, 1) * inside
        dent = 1 + 0.12 * _fbm(rng, P, P, max(rb, 3), 2)
        height = np.sqrt(np.clip(rad**2 - ys**2, 0, None)) * dent
        col = np.array([(195, 205, 210), (60, 120, 70), (110, 70, 30), (215, 215, 210)][int(rng.integers(4))], _F32)
        opacity = rng.uniform(0.6, 0.9)
        alb = np.broadcast_to(col, (P, P, 3)).copy()
        opaque = (np.broadcast_to(t, (P, P)) > 0.93).astype(_F32)
        if rng.random() < 0.5:  # label band
            band = ((t > 0.2) & (t < rng.uniform(0.4, 0.55))).astype(_F32)
            band = np.broadcast_to(band, (P, P))
            lcol = np.array([(200, 40, 40), (40, 60, 160), (230, 230, 225), (220, 180, 40)][int(rng.integers(4))], _F32)
            alb = alb * (1 - band[..., None]) + lcol * band[..., None]
            opaque = np.maximum(opaque, band)
        alpha = cover * (opacity + (1 - opacity) * opaque)
        return alpha.astype(_F32), height.astype(_F32), alb.astype(_F32), rng.uniform(0.4, 0.8), 60.0, rb
    if kind == "wire":
        r = max(rng.uniform(1.2, 3.2) * k, 1.0)
        p = np.array([(-S / 2, 0), (-S / 6, rng.normal(0, S * 0.3)), (S / 6, rng.normal(0, S * 0.3)), (S / 2, rng.normal(0, S * 0.15))], _F32) + P / 2
        d = _polyline_dist(_bezier(p, 32), 0, 0, P, P, r + 2)
        alpha = np.clip(r + 0.5 - d, 0, 1)
        height = np.sqrt(np.clip(r * r - np.minimum(d, r) ** 2, 0, None))
        col = [(175, 105, 55), (150, 150, 145), (35, 35, 35), (170, 150, 40), (150, 40, 30)][int(rng.integers(5))]
        alb = np.broadcast_to(np.array(col, _F32) * rng.uniform(0.85, 1.1), (P, P, 3)).copy()
        return alpha.astype(_F32), height.astype(_F32), alb, rng.uniform(0.3, 0.6), 40.0, r * 1.5
    if kind == "bolt":
        L = S
        rs, rh = S * rng.uniform(0.07, 0.1), S * rng.uniform(0.14, 0.18)
        x = xs + L / 2
        hl = L * 0.22
        shaft = (x > hl) & (x < L)
        head = (x >= 0) & (x <= hl)
        hs = np.sqrt(np.clip(rs * rs - ys * ys, 0, None)) * (1 + 0.15 * np.sin(x / max(rs * 0.7, 1) * 2 * math.pi) * (x > L * 0.55))
        hh = np.clip(1.7 * (rh - np.abs(ys)), 0, rh)
        height = np.where(shaft, hs, 0) + np.where(head, hh, 0)
        alpha = (np.where(shaft, np.clip(rs + 0.5 - np.abs(ys), 0, 1), 0) + np.where(head, np.clip(rh + 0.5 - np.abs(ys), 0, 1), 0)).clip(0, 1)
        col = _BOLT_COLORS[str(rng.choice(list(_BOLT_COLORS)))]
        alb = np.array(col, _F32) * tex(0.08, 0.4)[..., None]
        return alpha.astype(_F32), height.astype(_F32), alb.astype(_F32), 0.45, 25.0, rh
    # paper / leaf
    hw, hh = S / 2, S / 2 * rng.uniform(0.5, 0.9)
    poly = [(P / 2 + sx * hw + rng.normal(0, S * 0.06), P / 2 + sy * hh + rng.normal(0, S * 0.06)) for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    alpha = _poly_alpha(poly, P)
    height = (S * 0.04 * (xs / (S / 2)) ** 2 + S * 0.015 * _fbm(rng, P, P, max(S / 5, 3), 2)) * alpha
    col = [(200, 195, 180), (190, 180, 150), (120, 90, 50), (90, 100, 60)][int(rng.integers(4))]
    alb = np.array(col, _F32) * rng.uniform(0.7, 1.0) * (ones / np.exp(0.3 * _fbm(rng, P, P, max(S / 4, 3), 3)))[..., None]
    return alpha, height.astype(_F32), alb.astype(_F32), 0.05, 8.0, S * 0.04
