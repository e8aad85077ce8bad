"""The canonical scene of one region of a train underbody, and the renderer of its captures.

Each region ``(train, car, region)`` has one canonical scene, a deterministic function of
``(seed, train, car, region)``, rendered once per :class:`RegionScene` in a frame ``margin`` px larger than the
capture on every side (``margin ~ 5.5 %`` of the capture diagonal, enough for the largest viewpoint change): a
background (:mod:`._background`) under shaded parts (:mod:`._layout`, :mod:`._parts`) lit from a per-region
direction. Each capture is the canonical scene, plus an optional anomaly (:mod:`._anomalies`), seen through the
nuisance model (:mod:`._nuisance`).
"""

from __future__ import annotations

import math

import numpy as np

from ._anomalies import _draw_anomaly
from ._background import _render_background
from ._constants import _F32, _REF_DIAG
from ._layout import _lay_out
from ._nuisance import _affine, _identity, _photometric, _viewpoint, _warp
from ._parts import _Painter
from ._seeding import _rng
from ._shading import _composite, _Part, _to_u8


class RegionScene:
    """The canonical scene of one region (background + shaded parts) and the renderer of its captures."""

    def __init__(self, seed: int, key: tuple, width: int, height: int) -> None:
        self.W, self.H = int(width), int(height)
        diag = math.hypot(self.W, self.H)
        self.k = diag / _REF_DIAG  # length scale relative to 1920 x 1200
        self.m = int(math.ceil(0.055 * diag)) + 2  # margin of the canonical frame
        self.Wc, self.Hc = self.W + 2 * self.m, self.H + 2 * self.m
        rng = _rng(seed, "scene", *key)
        az = rng.uniform(0, 2 * math.pi)
        el = math.radians(rng.uniform(48, 72))
        self.light = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)], _F32)
        half = self.light + np.array([0, 0, 1], _F32)
        self.half = half / np.linalg.norm(half)
        self.amb = float(rng.uniform(0.3, 0.42))
        self.vignetting = float(rng.uniform(0.1, 0.3))  # of the camera: varies by +-0.05 between captures
        background = _render_background(rng, self.Wc, self.Hc, self.k)
        self.bg, self.grime, self.bg_mean, self.ptex = background.rgb, background.grime, background.mean, background.ptex
        self._gpts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        painter = _Painter(self.Wc, self.Hc, self.light, self.half, self.amb, background)
        self.groups: list[tuple[str, list[int]]] = _lay_out(painter, rng, self.k)  # removable groups: (kind, part indices)
        self.parts: list[_Part] = painter.parts
        canvas = self.bg.copy()
        for p in self.parts:
            _composite(canvas, (0, 0, self.Wc, self.Hc), p)
        self.scene = _to_u8(canvas)

    def viewpoint(self, rng: np.random.Generator) -> tuple[float, float, float, float]:
        """(tx, ty, rotation rad, scale): always draws the same numbers from ``rng``."""
        return _viewpoint(rng, self.k)

    def affine(self, tx: float, ty: float, rot: float, s: float) -> tuple[float, ...]:
        """PIL AFFINE data mapping a cur pixel to the canonical frame: p_c = c_c + t + s R(rot) (p - c)."""
        return _affine(tx, ty, rot, s, self.W, self.H, self.m)

    @property
    def identity(self) -> tuple[float, ...]:
        """PIL AFFINE data of the neutral viewpoint (the capture is the centre crop of the canonical frame)."""
        return _identity(self.m)

    def render(
        self,
        rng: np.random.Generator,
        *,
        anomaly: str | None = None,
        anomaly_rng: np.random.Generator | None = None,
        subtle: bool = False,
        viewpoint: bool = True,
        neutral: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None, str | None]:
        """One capture: (RGB uint8 image, uint8 0/255 mask or None, anomaly type actually drawn or None).

        ``neutral``: the pinned reference (identity viewpoint, neutral light, low noise). The nuisance draws
        from ``rng`` do not depend on the anomaly, so the same ``rng`` state with and without an anomaly gives
        images that differ only where the anomaly was drawn."""
        vp = self.viewpoint(rng)
        data = self.affine(*vp) if viewpoint and not neutral else self.identity
        scene, mask, atype = self.scene, None, None
        if anomaly is not None:
            atype, scene, mask = _draw_anomaly(self, anomaly_rng if anomaly_rng is not None else rng, anomaly, subtle, data)
        img = _warp(scene, data, self.W, self.H, self.m)
        return _photometric(rng, img, self.k, self.vignetting, neutral), mask, atype

    def group_points(self, gi: int) -> tuple[np.ndarray, np.ndarray]:
        """(xs, ys): a sample of the canonical pixels covered by removable group ``gi`` (cached)."""
        if gi not in self._gpts:
            ps = [self.parts[i] for i in self.groups[gi][1]]
            ys = [np.nonzero(p.alpha > 0.5)[0][::5] + p.y0 for p in ps]
            xs = [np.nonzero(p.alpha > 0.5)[1][::5] + p.x0 for p in ps]
            self._gpts[gi] = (np.concatenate(xs).astype(float), np.concatenate(ys).astype(float))
        return self._gpts[gi]
