"""The layout of a region's parts, by family, and the removable groups a ``missing_component`` can take away.

Structural beams (some with lightening holes), cover plates with rivets, painted labels and bolts, pipes
(cylindrical shading, flanges, bolted clamps), brackets (L, T, U, I shapes) with bolts, cables (cubic Bezier curves
entering from outside the frame, some ending in a gland), hex bolts, nuts on studs and dome-head bolts with washers.
All bolts are drawn last, on top. The families are drawn in a fixed order from one generator: the order of the
draws is part of the seeded output and must not change.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._constants import _CABLE_COLORS, _F32
from ._geometry import _bezier, _edge_point, _sd_box
from ._parts import _Painter, _pick_paint


def _lay_out(painter: _Painter, rng: np.random.Generator, k: float) -> list[tuple[str, list[int]]]:
    """Draw all parts of a region with ``painter``; the removable groups: (kind, part indices), none empty."""
    lay = _Layout(painter, rng, k)
    lay.beams()
    lay.plates()
    lay.clamps(lay.pipes())
    lay.brackets()
    lay.cables()
    lay.loose_bolts()
    return lay.bolts_on_top()


class _Layout:
    """The state shared by the part families: removable groups and the bolts to draw last."""

    def __init__(self, painter: _Painter, rng: np.random.Generator, k: float) -> None:
        self.p, self.rng, self.k = painter, rng, k
        self.Wc, self.Hc = painter.Wc, painter.Hc
        self.bolts_later: list[tuple[float, float, float, int | None]] = []  # (cx, cy, r, group) drawn last
        self.groups: list[tuple[str, list[int]]] = []

    def new_group(self, kind: str) -> int:
        """Open a removable group; its index."""
        self.groups.append((kind, []))
        return len(self.groups) - 1

    def beams(self) -> None:
        """Structural beams, running across the frame, some with lightening holes or a row of bolts."""
        rng, Wc, Hc, k = self.rng, self.Wc, self.Hc, self.k
        for _ in range(int(rng.integers(0, 3))):
            horiz = rng.random() < 0.6
            t = rng.uniform(150, 420) * k / 2
            c = rng.uniform(0.1, 0.9) * (Hc if horiz else Wc)
            L = (Wc if horiz else Hc) / 2 + 40 * k
            cx, cy = (Wc / 2, c) if horiz else (c, Hc / 2)
            hw, hh = (L, t) if horiz else (t, L)
            holes = None  # (radius, step, offset)
            if rng.random() < 0.4:  # a periodic row of lightening holes along the beam
                hr = rng.uniform(0.3, 0.6) * t
                holes = (hr, rng.uniform(3.0, 5.0) * hr, rng.uniform(0, 1))

            def sd_beam(u, v, hw=hw, hh=hh, holes=holes, horiz=horiz):
                sd = _sd_box(u, v, hw, hh, 0)
                if holes is not None:
                    hr, step, off = holes
                    along, across = (u, v) if horiz else (v, u)
                    along = np.mod(along + off * step, step) - step / 2
                    sd = np.maximum(sd, -(np.hypot(along, across) - hr))
                return sd

            col = self.p.bg.rgb.reshape(-1, 3)[::97].mean(0) * rng.uniform(0.65, 1.5)
            self.p.flat_part(rng, "beam", cx, cy, sd_beam, max(hw, hh), col, rng.uniform(8, 16) * k, rng.uniform(6, 14) * k,
                             obj_h=rng.uniform(10, 25) * k)
            if rng.random() < 0.5:  # a row of bolts along one edge
                r = rng.uniform(12, 22) * k
                e = rng.choice([-1, 1]) * (t - 2.2 * r)
                step = rng.uniform(5, 9) * r
                for s in np.arange(-L + rng.uniform(0, step), L, step):
                    bx, by = (cx + s, cy + e) if horiz else (cx + e, cy + s)
                    self.bolts_later.append((bx, by, r, self.new_group("bolt")))

    def plates(self) -> None:
        """Cover plates with rivets, labels, bolts and holes; small ones may be removable with their bolts."""
        rng, Wc, Hc, k = self.rng, self.Wc, self.Hc, self.k
        for _ in range(int(rng.integers(1, 4))):
            hw, hh = rng.uniform(90, 300) * k, rng.uniform(70, 220) * k
            cx, cy = rng.uniform(0.1, 0.9) * Wc, rng.uniform(0.1, 0.9) * Hc
            ang = math.radians(rng.normal(0, 4) if rng.random() < 0.75 else rng.uniform(0, 180))
            ca, sa = math.cos(ang), math.sin(ang)
            rc = rng.uniform(0.02, 0.15) * min(hw, hh)
            holes: list[tuple[float, float, float]] = []  # (u, v, radius) in the plate's frame
            if rng.random() < 0.25:
                hr = rng.uniform(0.15, 0.3) * min(hw, hh)
                holes = [(rng.uniform(-0.5, 0.5) * hw, rng.uniform(-0.4, 0.4) * hh, hr)]

            def to_canvas(lu, lv, cx=cx, cy=cy, ca=ca, sa=sa):
                return cx + lu * ca - lv * sa, cy + lu * sa + lv * ca

            def sd_plate(u, v, hw=hw, hh=hh, rc=rc, holes=holes, ca=ca, sa=sa):
                lu, lv = u * ca + v * sa, -u * sa + v * ca
                sd = _sd_box(lu, lv, hw, hh, rc)
                for hu, hv, hr in holes:
                    sd = np.maximum(sd, -(np.hypot(lu - hu, lv - hv) - hr))
                return sd

            rivets = _plate_rivets(rng, hw, hh, k, to_canvas) if rng.random() < 0.45 else []
            label = _plate_label(rng, hw, hh, k, ca, sa) if rng.random() < 0.3 else None
            color = _pick_paint(rng)
            small = hw * hh < (170 * k) ** 2
            g = self.new_group("plate") if small and rng.random() < 0.7 else None
            idx = self.p.flat_part(rng, "plate", cx, cy, sd_plate, math.hypot(hw, hh) + 2, color, rng.uniform(4, 9) * k,
                                   rng.uniform(3, 8) * k, spec=rng.uniform(0.08, 0.3), rivets=rivets, label=label)
            if idx is None:
                if g is not None:
                    self.groups.pop()
                continue
            if g is not None:
                self.groups[g][1].append(idx)
            if rng.random() < 0.5:  # bolts at the corners or along a side
                r = rng.uniform(11, 20) * k
                ins = rng.uniform(1.8, 2.6) * r
                if rng.random() < 0.5:
                    spots = [(-hw + ins, -hh + ins), (hw - ins, -hh + ins), (-hw + ins, hh - ins), (hw - ins, hh - ins)]
                else:
                    n = int(rng.integers(2, 6))
                    side = rng.choice([-1, 1]) * (hh - ins)
                    spots = [(s, side) for s in np.linspace(-hw + ins, hw - ins, n)]
                for su, sv in spots:
                    self.bolts_later.append((*to_canvas(su, sv), r, g if g is not None else self.new_group("bolt")))

    def pipes(self) -> list[tuple]:
        """Pipes with bends across the frame; the clamps and flanges to put on them: (x, y, ux, uy, r, is_flange)."""
        rng, Wc, Hc, k = self.rng, self.Wc, self.Hc, self.k
        clamps = []
        for _ in range(int(rng.integers(0, 3))):
            r = rng.uniform(16, 42) * k
            horiz = rng.random() < 0.7
            A, B = (Wc, Hc) if horiz else (Hc, Wc)
            c0 = rng.uniform(0.12, 0.88) * B
            xs_ = np.sort(rng.uniform(0.15, 0.85, int(rng.integers(0, 3)))) * A
            knots: list[Any] = [(-3 * r, c0)]
            c = c0
            for x in xs_:
                dc = rng.uniform(-0.25, 0.25) * B
                knots += [(x - abs(dc) * 0.5, c), (x + abs(dc) * 0.5, c + dc)]
                c = c + dc
            knots.append((A + 3 * r, c))
            pts = np.array(knots if horiz else [(y, x) for x, y in knots], _F32)
            col = _pick_paint(rng, ["steel", "black", "green", "rust", "dark_grey", "blue_grey"])
            idx = self.p.tube(rng, "pipe", pts, r, col, spec=rng.uniform(0.15, 0.5), shin=rng.uniform(15, 40))
            if idx is None:
                continue
            seg = int(rng.integers(len(pts) - 1))
            (ax, ay), (bx, by) = pts[seg], pts[seg + 1]
            L = math.hypot(bx - ax, by - ay)
            if L > 6 * r:
                ux, uy = (bx - ax) / L, (by - ay) / L
                for j in range(int(rng.integers(1, 3))):
                    t = rng.uniform(2 * r, L - 2 * r)
                    clamps.append((ax + ux * t, ay + uy * t, ux, uy, r, j == 0 and rng.random() < 0.4))
        return clamps

    def clamps(self, clamps: list[tuple]) -> None:
        """Flanges and removable bolted clamps on the pipes."""
        rng = self.rng
        for px, py, ux, uy, r, is_flange in clamps:
            ang = math.atan2(uy, ux)
            ca, sa = math.cos(ang), math.sin(ang)
            if is_flange:
                R, bw = r * rng.uniform(1.25, 1.45), r * rng.uniform(0.25, 0.4)

                def sd_fl(u, v, R=R, bw=bw, ca=ca, sa=sa):
                    return _sd_box(u * ca + v * sa, -u * sa + v * ca, bw, R, 0.15 * bw)

                self.p.flat_part(rng, "flange", px, py, sd_fl, R + bw + 2, _pick_paint(rng), R, 0.5 * R)
                continue
            tab = r * rng.uniform(0.6, 1.0)
            bw = r * rng.uniform(0.45, 0.8)
            R = r * 1.12 + tab

            def sd_cl(u, v, R=R, bw=bw, ca=ca, sa=sa):
                return _sd_box(u * ca + v * sa, -u * sa + v * ca, bw, R, 0.3 * bw)

            g = self.new_group("clamp")
            idx = self.p.flat_part(rng, "clamp", px, py, sd_cl, R + bw + 2, _pick_paint(rng, ["steel", "black", "dark_grey"]),
                                   r * 0.9, 0.45 * r, spec=0.3)
            if idx is None:
                self.groups.pop()
                continue
            self.groups[g][1].append(idx)
            br = min(0.42 * tab, 0.8 * bw)
            for s in (-1, 1):
                self.bolts_later.append((px - sa * s * (R - tab / 2), py + ca * s * (R - tab / 2), br, g))

    def brackets(self) -> None:
        """Removable L, T, U and I brackets with their bolts."""
        rng, Wc, Hc, k = self.rng, self.Wc, self.Hc, self.k
        for _ in range(int(rng.integers(1, 5))):
            a, b2 = rng.uniform(70, 190) * k, rng.uniform(60, 170) * k
            wd = rng.uniform(22, 50) * k
            boxes, spots = _bracket_shape(str(rng.choice(["L", "T", "U", "I"])), a, b2, wd)
            ang = rng.uniform(0, 2 * math.pi)
            ca, sa = math.cos(ang), math.sin(ang)
            cx, cy = rng.uniform(0.08, 0.92) * Wc, rng.uniform(0.08, 0.92) * Hc
            rc = rng.uniform(0.1, 0.5) * wd

            def sd_br(u, v, boxes=boxes, ca=ca, sa=sa, rc=rc):
                lu, lv = u * ca + v * sa, -u * sa + v * ca
                sd = None
                for bx, by, hw, hh in boxes:
                    s = _sd_box(lu - bx, lv - by, hw, hh, rc)
                    sd = s if sd is None else np.minimum(sd, s)
                return sd

            g = self.new_group("bracket")
            idx = self.p.flat_part(rng, "bracket", cx, cy, sd_br, a + b2 + wd, _pick_paint(rng), rng.uniform(6, 12) * k,
                                   rng.uniform(3, 6) * k, spec=rng.uniform(0.1, 0.35))
            if idx is None:
                self.groups.pop()
                continue
            self.groups[g][1].append(idx)
            br = wd * rng.uniform(0.28, 0.38)
            for su, sv in spots:
                self.bolts_later.append((cx + su * ca - sv * sa, cy + su * sa + sv * ca, br, g))

    def cables(self) -> None:
        """Removable cables (cubic Bezier curves) from outside the frame, some ending in a gland, some in pairs."""
        rng, Wc, Hc, k = self.rng, self.Wc, self.Hc, self.k
        for _ in range(int(rng.integers(1, 4))):
            r = rng.uniform(4, 11) * k
            p = np.array([(rng.uniform(-0.1, 1.1) * Wc, rng.uniform(-0.1, 1.1) * Hc) for _ in range(4)], _F32)
            p[0] = _edge_point(rng, Wc, Hc, 30 * k)  # cables come from outside the frame
            gland = rng.random() < 0.3  # ... and either leave it or end in a cable gland
            if not gland:
                p[3] = _edge_point(rng, Wc, Hc, 30 * k)
            pts = _bezier(p, 48)
            col = _CABLE_COLORS[str(rng.choice(list(_CABLE_COLORS), p=[0.5, 0.2, 0.2, 0.1]))]
            g = self.new_group("cable")
            idx = self.p.tube(rng, "cable", pts, r, col, spec=rng.uniform(0.1, 0.35), shin=20)
            if idx is None:
                self.groups.pop()
                continue
            self.groups[g][1].append(idx)
            if gland:
                self.bolts_later.append((float(p[3][0]), float(p[3][1]), r * rng.uniform(1.8, 2.4), g))
            if rng.random() < 0.35:  # a second cable alongside
                nrm = np.gradient(pts, axis=0)[:, ::-1] * np.array([1, -1], _F32)
                nrm /= np.linalg.norm(nrm, axis=1, keepdims=True) + 1e-6
                idx2 = self.p.tube(rng, "cable", pts + nrm * 2.1 * r, r, col, spec=0.2, shin=20)
                if idx2 is not None:
                    self.groups[g][1].append(idx2)

    def loose_bolts(self) -> None:
        """Loose rows of removable bolts anywhere."""
        rng, Wc, Hc, k = self.rng, self.Wc, self.Hc, self.k
        for _ in range(int(rng.integers(0, 3))):
            r = rng.uniform(12, 26) * k
            cx, cy, ang = rng.uniform(0.1, 0.9) * Wc, rng.uniform(0.1, 0.9) * Hc, rng.uniform(0, math.pi)
            step = rng.uniform(3.5, 7) * r
            n = int(rng.integers(1, 5))
            for i in range(n):
                s = (i - (n - 1) / 2) * step
                self.bolts_later.append((cx + s * math.cos(ang), cy + s * math.sin(ang), r, self.new_group("bolt")))

    def bolts_on_top(self) -> list[tuple[str, list[int]]]:
        """Draw all bolts, over everything else; the non-empty removable groups."""
        for bx, by, r, g in self.bolts_later:
            idx = self.p.bolt(self.rng, bx, by, r)
            if idx is not None and g is not None:
                self.groups[g][1].append(idx)
        return [(kind, idxs) for kind, idxs in self.groups if idxs]


def _plate_rivets(rng, hw, hh, k, to_canvas):
    """Rivets around a plate's border: (x, y, radius) in the canvas."""
    rr = rng.uniform(5, 9) * k
    ins = 2.3 * rr
    step = rng.uniform(5, 9) * rr
    rivets = []
    for s in np.arange(-hw + ins, hw - ins + 1e-3, step):
        rivets += [(*to_canvas(s, -hh + ins), rr), (*to_canvas(s, hh - ins), rr)]
    for s in np.arange(-hh + ins + step, hh - ins - 1e-3, step):
        rivets += [(*to_canvas(-hw + ins, s), rr), (*to_canvas(hw - ins, s), rr)]
    return rivets


def _plate_label(rng, hw, hh, k, ca, sa):
    """A painted label with three printed bars on a plate: a function of local (u, v) -> (coverage, colour)."""
    lw, lh = rng.uniform(0.25, 0.45) * hw, rng.uniform(0.15, 0.3) * hh
    lu0, lv0 = rng.uniform(-0.3, 0.3) * hw, rng.uniform(-0.4, 0.4) * hh
    lcol = np.array([(175, 165, 120), (170, 170, 160), (160, 140, 60)][int(rng.integers(3))], _F32)
    bars = [(rng.uniform(-0.7, 0.3) * lw, (i - 1) * lh * 0.45, rng.uniform(0.2, 0.6) * lw) for i in range(3)]

    def label(u, v):
        lu, lv = u * ca + v * sa - lu0, -u * sa + v * ca - lv0
        a = np.clip(0.5 - _sd_box(lu, lv, lw, lh, 2 * k), 0, 1) * 0.9
        col = np.broadcast_to(lcol, a.shape + (3,)).copy()
        for bu, bv, bl in bars:
            t = np.clip(0.5 - _sd_box(lu - bu - bl, lv - bv, bl, max(lh * 0.1, 1.0)), 0, 1)
            col *= (1 - 0.8 * t)[..., None]
        return a, col

    return label


def _bracket_shape(shape: str, a: float, b2: float, wd: float):
    """A bracket's boxes (cx, cy, half w, half h) and bolt spots in its frame, for arms ``a``, ``b2`` of width ``wd``."""
    if shape == "L":
        boxes = [(a / 2, 0, a / 2 + wd / 2, wd / 2), (0, b2 / 2, wd / 2, b2 / 2 + wd / 2)]
        spots = [(a - wd * 0.4, 0), (0, b2 - wd * 0.4)]
    elif shape == "T":
        boxes = [(0, 0, a / 2, wd / 2), (0, b2 / 2, wd / 2, b2 / 2)]
        spots = [(-a / 2 + wd * 0.6, 0), (a / 2 - wd * 0.6, 0)]
    elif shape == "U":
        boxes = [(0, 0, a / 2, wd / 2), (-a / 2 + wd / 2, b2 / 2, wd / 2, b2 / 2), (a / 2 - wd / 2, b2 / 2, wd / 2, b2 / 2)]
        spots = [(-a / 2 + wd / 2, b2 - wd * 0.4), (a / 2 - wd / 2, b2 - wd * 0.4)]
    else:
        boxes = [(0, 0, a / 2 + wd / 2, wd / 2)]
        spots = [(-a / 2, 0), (a / 2, 0)]
    return boxes, spots
