"""Drawing primitives of the parts on a canonical scene: bolts, bevelled flat parts and tubes.

Parts are rendered analytically (signed distance functions, height fields, Lambert + Blinn-Phong shading with the
region's light direction, textured albedo, soft drop shadows). Part colours are dirtied toward the background and
share its grime field; their albedo carries a fine real texture.
"""

from __future__ import annotations

import math

import numpy as np

from ._background import _Background
from ._constants import _BOLT_COLORS, _F32, _PAINT_WEIGHTS, _PAINTS
from ._geometry import _polyline_dist, _sd_hex, _tight
from ._shading import _Part, _shadow, shade


def _pick_paint(rng, choices=None):
    """A paint colour among ``choices`` (default: all), drawn with the paints' weights."""
    names = list(choices or _PAINTS)
    w = np.array([_PAINT_WEIGHTS[n] for n in names])
    return _PAINTS[str(rng.choice(names, p=w / w.sum()))]


class _Painter:
    """Draws shaded parts on a Wc x Hc canonical frame and keeps them, in drawing order, in ``parts``."""

    def __init__(self, Wc: int, Hc: int, light: np.ndarray, half: np.ndarray, amb: float, bg: _Background) -> None:
        self.Wc, self.Hc = Wc, Hc
        self.light, self.half, self.amb = light, half, amb
        self.bg = bg
        self.parts: list[_Part] = []

    def box(self, xa: float, ya: float, xb: float, yb: float):
        """Integer patch box covering [xa, xb] x [ya, yb], clipped to the canvas, with pixel-centre coordinates."""
        x0, y0 = max(int(math.floor(xa)), 0), max(int(math.floor(ya)), 0)
        x1, y1 = min(int(math.ceil(xb)) + 1, self.Wc), min(int(math.ceil(yb)) + 1, self.Hc)
        if x0 >= x1 or y0 >= y1:
            return None
        xs = np.arange(x0, x1, dtype=_F32)[None, :] + 0.5
        ys = np.arange(y0, y1, dtype=_F32)[:, None] + 0.5
        return x0, y0, x1 - x0, y1 - y0, xs, ys

    def albedo(self, rng, color, x0, y0, w, h, amp=None) -> np.ndarray:
        """Paint colour, dirtied toward the background, modulated by a shared real texture and the grime field."""
        amp = rng.uniform(0.04, 0.12) if amp is None else amp
        tex = self.bg.ptex[int(rng.integers(2))][y0 : y0 + h, x0 : x0 + w]
        col = np.asarray(color, _F32) * rng.uniform(0.88, 1.12)
        col = col + (self.bg.mean - col) * rng.uniform(0.1, 0.35)
        mod = (1 + (amp if rng.random() < 0.5 else -amp) * tex) * self.bg.grime[y0 : y0 + h, x0 : x0 + w]
        return col * np.maximum(mod, 0.2)[..., None]

    def shade(self, height, albedo, spec=0.2, shin=20.0):
        """:func:`shade` under the region's light."""
        return shade(height, albedo, self.light, self.half, self.amb, spec, shin)

    def add(self, kind, x0, y0, rgb, alpha, obj_h, strength=0.45, hole=None) -> int:
        """Store a rendered part (patches cropped to where they have an effect) with its soft shadow; its index."""
        sh, sx0, sy0 = _shadow(alpha, x0, y0, obj_h, self.light, strength)
        t = _tight(sh, 1e-3)
        if t is None:
            sh = None
        else:
            sh, sx0, sy0 = sh[t[0] : t[1], t[2] : t[3]], sx0 + t[2], sy0 + t[0]
        t = _tight(alpha, 0.0)
        if t is not None:
            rgb, alpha, x0, y0 = rgb[t[0] : t[1], t[2] : t[3]], alpha[t[0] : t[1], t[2] : t[3]], x0 + t[2], y0 + t[0]
        self.parts.append(_Part(kind, x0, y0, np.ascontiguousarray(rgb, _F32), np.ascontiguousarray(alpha, _F32), sh, sx0, sy0, hole))
        return len(self.parts) - 1

    def bolt(self, rng, cx, cy, r, color=None) -> int | None:
        """A hex bolt, a nut on a stud or a dome-head bolt, most with a washer; its index (None if off the canvas)."""
        r = max(r, 2.5)
        washer = rng.random() < 0.8
        rw = r * rng.uniform(1.2, 1.45) if washer else r
        b = self.box(cx - rw - 2, cy - rw - 2, cx + rw + 2, cy + rw + 2)
        if b is None:
            return None
        x0, y0, w, h, xs, ys = b
        u, v = xs - cx, ys - cy
        rho = np.hypot(u, v)
        tw = 0.12 * r
        height = np.zeros((h, w), _F32)
        alpha = np.zeros((h, w), _F32)
        if washer:
            sdw = rho - rw
            alpha = np.clip(0.5 - sdw, 0, 1)
            height = tw * np.clip(-sdw / (0.12 * r + 1), 0, 1) ** 0.5
        style = rng.choice(["hex", "nut", "dome"], p=[0.55, 0.3, 0.15])
        if style == "dome":
            sdh = rho - r
            hh = tw + 0.5 * r * np.sqrt(np.clip(1 - (rho / r) ** 2, 0, 1))
        else:
            a = rng.uniform(0, math.pi / 3)
            ru, rv = u * math.cos(a) + v * math.sin(a), -u * math.sin(a) + v * math.cos(a)
            sdh = _sd_hex(ru, rv, r * 0.866)
            hh = tw + 0.55 * r * np.clip(-sdh / (0.2 * r + 0.5), 0, 1) ** 0.7
            if style == "nut":
                rs = 0.45 * r
                stud = np.clip(1 - (rho / rs) ** 2, 0, 1)
                hh = hh + 0.3 * r * np.sqrt(stud) + 0.03 * r * np.sin(rho / (0.1 * r) * 2 * math.pi) * (stud > 0)
        ah = np.clip(0.5 - sdh, 0, 1)
        height = height * (1 - ah) + hh * ah
        alpha = np.maximum(alpha, ah)
        col = color or _BOLT_COLORS[str(rng.choice(list(_BOLT_COLORS), p=[0.4, 0.25, 0.15, 0.2]))]
        alb = self.albedo(rng, col, x0, y0, w, h, amp=0.06)
        alb *= (1 - 0.12 * (1 - ah))[..., None]  # washer a little darker than the head
        rgb = self.shade(height, alb, spec=rng.uniform(0.25, 0.5), shin=25)
        return self.add("bolt", x0, y0, rgb, alpha, 0.55 * r, hole=(cx, cy, r, rw))

    def flat_part(self, rng, kind, cx, cy, sd_fn, extent, color, thick, bevel, spec=0.15, rivets=(), label=None, obj_h=None):
        """Bevelled flat part from a signed distance function of local (u, v); returns the part index."""
        b = self.box(cx - extent, cy - extent, cx + extent, cy + extent)
        if b is None:
            return None
        x0, y0, w, h, xs, ys = b
        sd = sd_fn(xs - cx, ys - cy)
        alpha = np.clip(0.5 - sd, 0, 1)
        if alpha.max() < 0.5:
            return None
        height = thick * np.clip(-sd / bevel, 0, 1) ** 0.6
        for rx, ry, rr in rivets:
            sx0, sy0 = max(int(rx - rr) - x0 - 1, 0), max(int(ry - rr) - y0 - 1, 0)
            sx1, sy1 = min(int(rx + rr) - x0 + 2, w), min(int(ry + rr) - y0 + 2, h)
            if sx0 < sx1 and sy0 < sy1:
                rho = np.hypot(xs[:, sx0:sx1] - rx, ys[sy0:sy1] - ry)
                height[sy0:sy1, sx0:sx1] += 0.7 * rr * np.sqrt(np.clip(1 - (rho / rr) ** 2, 0, 1))
        alb = self.albedo(rng, color, x0, y0, w, h)
        if label is not None:
            lab = label(xs - cx, ys - cy)
            alb = alb * (1 - lab[0][..., None]) + lab[0][..., None] * lab[1] * self.bg.grime[y0 : y0 + h, x0 : x0 + w, None]
        rgb = self.shade(height, alb, spec=spec, shin=rng.uniform(10, 30))
        return self.add(kind, x0, y0, rgb, alpha, obj_h if obj_h is not None else thick * 1.3)

    def tube(self, rng, kind, pts, r, color, spec=0.3, shin=30.0):
        """A cylinder of radius ``r`` along the polyline ``pts`` (pipes, cables); returns the part index."""
        pts = np.asarray(pts, _F32)
        b = self.box(pts[:, 0].min() - r - 2, pts[:, 1].min() - r - 2, pts[:, 0].max() + r + 2, pts[:, 1].max() + r + 2)
        if b is None:
            return None
        x0, y0, w, h, _, _ = b
        d = _polyline_dist(pts, x0, y0, w, h, r + 2)
        alpha = np.clip(r + 0.5 - d, 0, 1)
        if alpha.max() < 0.5:
            return None
        height = np.sqrt(np.clip(r * r - np.minimum(d, r) ** 2, 0, None))
        alb = self.albedo(rng, color, x0, y0, w, h)
        rgb = self.shade(height, alb, spec=spec, shin=shin)
        return self.add(kind, x0, y0, rgb, alpha, 0.8 * r)
