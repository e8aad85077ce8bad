"""Missing components: a region re-rendered without one removable part group.

A group is a bolt, a bracket or clamp with its bolts, a small plate with its bolts, or a cable; a missing bolt
leaves a hole or a broken stud and a cleaner ring of paint. Mask: the visible footprint of the removed parts (alpha
> 0.5, not hidden by parts drawn above). Subtle ones remove a single bolt (when one is in view).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._constants import _BOLT_COLORS, _F32
from ._geometry import _clip_boxes, _invert_affine
from ._shading import _composite, _to_u8, shade

if TYPE_CHECKING:
    from ._scene import RegionScene

_GROUP_WEIGHTS = {"bolt": 1.0, "bracket": 0.8, "clamp": 0.6, "plate": 0.5, "cable": 0.35}  # how often each is taken


def _missing(scene: RegionScene, rng, subtle, data):
    """Re-render a window without one removable group; mask = its visible footprint (not its cast shadow)."""
    gi = _choose_group(scene, rng, subtle, data)
    if gi is None:
        return _missing(scene, rng, False, data) if subtle else None  # no bolt in view: any part group
    removed = set(scene.groups[gi][1])
    boxes = []
    for i in removed:
        p = scene.parts[i]
        boxes.append((p.x0, p.y0, p.x0 + p.alpha.shape[1], p.y0 + p.alpha.shape[0]))
        if p.shadow is not None:
            boxes.append((p.sx0, p.sy0, p.sx0 + p.shadow.shape[1], p.sy0 + p.shadow.shape[0]))
    win = (max(min(b[0] for b in boxes), 0), max(min(b[1] for b in boxes), 0),
           min(max(b[2] for b in boxes), scene.Wc), min(max(b[3] for b in boxes), scene.Hc))
    dst = scene.bg[win[1] : win[3], win[0] : win[2]].copy()
    top = np.full(dst.shape[:2], -1, np.int32)
    for i, p in enumerate(scene.parts):
        h, w = p.alpha.shape
        cl = _clip_boxes(p.x0, p.y0, h, w, win)
        if cl is None and (p.shadow is None or _clip_boxes(p.sx0, p.sy0, p.shadow.shape[0], p.shadow.shape[1], win) is None):
            continue
        if cl is not None:
            (dy, dx), (py, px) = cl
            top[dy, dx][p.alpha[py, px] > 0.5] = i
        if i not in removed:
            _composite(dst, win, p)
    foot = np.isin(top, list(removed))
    _bolt_traces(scene, rng, dst, win, removed, foot)
    if not foot.any():
        return None
    return (win[0], win[1]), _to_u8(dst), foot


def _choose_group(scene: RegionScene, rng, subtle, data):
    """A removable group mostly in the cur view (only bolts when ``subtle``), by kind weight; None if none."""
    ia, ib, ic, id_, ie, if_ = _invert_affine(data)
    cands, weights = [], []
    for gi, (kind, _idxs) in enumerate(scene.groups):
        if subtle and kind != "bolt":
            continue
        ax, ay = scene.group_points(gi)
        if ax.size == 0:
            continue
        ux, uy = ia * ax + ib * ay + ic, id_ * ax + ie * ay + if_  # in the cur frame
        if ((ux > 2) & (ux < scene.W - 2) & (uy > 2) & (uy < scene.H - 2)).mean() < 0.6:
            continue
        cands.append(gi)
        weights.append(_GROUP_WEIGHTS.get(kind, 0.5))
    if not cands:
        return None
    w = np.asarray(weights)
    return cands[int(rng.choice(len(cands), p=w / w.sum()))]


def _bolt_traces(scene: RegionScene, rng, dst, win, removed, foot) -> None:
    """What was under a removed bolt: a hole or a broken stud, and cleaner paint where the head sat (in place)."""
    xs = np.arange(win[0], win[2], dtype=_F32)[None, :] + 0.5
    ys = np.arange(win[1], win[3], dtype=_F32)[:, None] + 0.5
    for i in sorted(removed):
        if scene.parts[i].hole is None:
            continue
        hx, hy, r, rw = scene.parts[i].hole
        rho = np.hypot(xs - hx, ys - hy)
        if rng.random() < 0.85:
            ghost = np.clip(0.5 - (rho - rw * 0.95), 0, 1) * foot
            dst *= (1 + rng.uniform(0.06, 0.18) * ghost)[..., None]
        if rng.random() < 0.7:
            hole = np.clip(0.5 - (rho - 0.45 * r * rng.uniform(0.8, 1.1)), 0, 1) * foot
            dst *= (1 - rng.uniform(0.55, 0.8) * hole)[..., None]
        else:
            rs = 0.4 * r
            hgt = np.sqrt(np.clip(rs * rs - rho * rho, 0, None)) * 1.5
            stud = np.clip(0.5 - (rho - rs), 0, 1) * foot
            col = np.broadcast_to(np.array(_BOLT_COLORS["steel"], _F32), dst.shape)
            lit = shade(hgt.astype(_F32), col, scene.light, scene.half, scene.amb, 0.4, 25)
            dst += (lit - dst) * stud[..., None]
