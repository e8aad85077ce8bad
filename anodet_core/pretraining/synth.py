"""One synthetic cur/his pair from one real photograph: depot nuisance between the two, labelled changes in one.

The photograph is the "world". cur and his are two views of it (a small similarity + perspective change
between them, a smooth parallax field on his), each with its own illumination gradient, gain and gamma,
sometimes a cast shadow or a specular highlight, blur, sensor noise and JPEG compression: everything a depot
sees between two nights that is not a finding. The changes that matter are drawn into the world before it is
viewed, in one of the two copies: foreign objects cut with their outline from *other* photographs (cur only),
missing parts (the object is in his only), displaced parts, scratches, stains and leaks, of many sizes. The
label is the change's footprint in cur's frame; a change that is not visible (it resembles what it covers)
is dropped instead of being labelled.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

__all__ = ["SynthPair", "synth_pair", "draw_change", "footprint_level", "CHANGE_KINDS"]

CHANGE_KINDS = ("foreign", "missing", "displaced", "scratch", "stain")
_WORLD = (640, 480)  # world canvas (w, h); views are (512, 384) windows of it
_VIEW = (512, 384)
_MIN_VISIBLE = 14.0  # mean |cur - his| (0-255) inside a change for it to count as visible


@dataclass
class SynthPair:
    """Encoded views and the label in cur's frame."""

    cur_jpeg: bytes
    his_jpeg: bytes
    mask: np.ndarray  # bool (h, w) of cur's native frame
    kinds: list[str] = field(default_factory=list)


def _rgb(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.shape[2] == 4:
        a = a[..., :3]
    if a.dtype != np.uint8:
        a = np.clip(a * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return a


def _crop_world(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random 4:3 window of the photograph (35-100 % of its short side), flipped/rotated, resized to the world."""
    a = _rgb(photo)
    k = int(rng.integers(0, 4))
    a = np.rot90(a, k) if k else a
    if rng.random() < 0.5:
        a = a[:, ::-1]
    h, w = a.shape[:2]
    frac = rng.uniform(0.35, 1.0)
    ch = int(min(h, w * 3 / 4) * frac)
    cw = int(ch * 4 / 3)
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    crop = np.ascontiguousarray(a[y0 : y0 + ch, x0 : x0 + cw])
    world = np.asarray(Image.fromarray(crop).resize(_WORLD, Image.Resampling.BILINEAR), np.float32)
    if rng.random() < 0.2:  # colour cast: the same scene under another lamp
        world = world * rng.uniform(0.8, 1.2, size=3).astype(np.float32)
    return np.clip(world, 0, 255)


def _blob_alpha(rng: np.random.Generator, h: int, w: int, r: float) -> tuple[np.ndarray, int, int]:
    """Soft-edged random polygon (cut-out outline) of radius ~r at a random place; returns (alpha, cy, cx)."""
    n = int(rng.integers(5, 12))
    ang = np.sort(rng.uniform(0, 2 * math.pi, n))
    rad = r * rng.uniform(0.55, 1.0, n)
    aspect = rng.uniform(0.35, 1.0)
    theta = rng.uniform(0, math.pi)
    cy = int(rng.uniform(r + 4, h - r - 4)) if h > 2 * r + 8 else h // 2
    cx = int(rng.uniform(r + 4, w - r - 4)) if w > 2 * r + 8 else w // 2
    u, v = rad * np.cos(ang), rad * np.sin(ang) * aspect
    xs = cx + u * math.cos(theta) - v * math.sin(theta)
    ys = cy + u * math.sin(theta) + v * math.cos(theta)
    img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(img).polygon(list(zip(xs.tolist(), ys.tolist())), fill=255)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.5)))
    return np.asarray(img, np.float32) / 255.0, cy, cx


def _paste_object(dst: np.ndarray, donor: np.ndarray, rng: np.random.Generator, r: float) -> np.ndarray:
    """Paste a cut-out of ``donor`` into ``dst`` in place (outline and drop shadow included); returns its alpha."""
    h, w = dst.shape[:2]
    alpha, cy, cx = _blob_alpha(rng, h, w, r)
    d = _rgb(donor)
    scale = rng.uniform(0.5, 2.0)
    dh, dw = d.shape[:2]
    tw, th = max(8, int(dw * scale)), max(8, int(dh * scale))
    d = np.asarray(Image.fromarray(np.ascontiguousarray(d)).resize((tw, th), Image.Resampling.BILINEAR), np.float32)
    oy = int(rng.integers(0, max(1, th - h))) if th > h else 0
    ox = int(rng.integers(0, max(1, tw - w))) if tw > w else 0
    content = np.zeros_like(dst)
    ph, pw = min(h, th - oy), min(w, tw - ox)
    content[:ph, :pw] = d[oy : oy + ph, ox : ox + pw]
    if ph < h or pw < w:  # small donor: tile it
        content = np.tile(content[:ph, :pw], (h // ph + 1, w // pw + 1, 1))[:h, :w]
    # drop shadow under the object (its own light), then the object with a darker rim
    if rng.random() < 0.6:
        sh = ndimage.shift(alpha, (rng.uniform(2, 8), rng.uniform(-6, 6)), order=1)
        sh = ndimage.gaussian_filter(sh, rng.uniform(1.5, 4.0))
        dst *= (1 - rng.uniform(0.25, 0.55) * sh)[..., None]
    if rng.random() < 0.5:
        rim = np.clip(alpha - ndimage.grey_erosion(alpha, size=(3, 3)), 0, 1)
        content *= (1 - 0.5 * rim)[..., None]
    if rng.random() < 0.5:  # lit like the scene: a gradient across the object
        g = np.linspace(rng.uniform(0.7, 1.0), rng.uniform(1.0, 1.3), w, dtype=np.float32)[None, :, None]
        content = content * g
    dst[:] = dst * (1 - alpha[..., None]) + content * alpha[..., None]
    return alpha


def _displace(cur_w: np.ndarray, rng: np.random.Generator, r: float) -> np.ndarray:
    """Move a part of the world: its patch appears shifted, its old place shows another patch of the scene."""
    h, w = cur_w.shape[:2]
    orig = cur_w.copy()
    alpha, cy, cx = _blob_alpha(rng, h, w, r)
    dy, dx = rng.uniform(0.6, 1.6, 2) * r * rng.choice([-1, 1], 2)
    moved_alpha = ndimage.shift(alpha, (dy, dx), order=1)
    moved = np.stack([ndimage.shift(orig[..., c], (dy, dx), order=1, mode="nearest") for c in range(3)], -1)
    fy, fx = rng.uniform(-0.4, 0.4, 2) * np.array([h, w])
    filler = np.stack([ndimage.shift(orig[..., c], (fy, fx), order=1, mode="reflect") for c in range(3)], -1)
    cur_w[:] = orig * (1 - alpha[..., None]) + filler * alpha[..., None]
    cur_w[:] = cur_w * (1 - moved_alpha[..., None]) + moved * moved_alpha[..., None]
    return np.maximum(alpha, moved_alpha)


def _scratch(cur_w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A thin curved bright or dark line (1-4 px wide, 10-50 % of the side long)."""
    h, w = cur_w.shape[:2]
    length = rng.uniform(0.1, 0.5) * min(h, w)
    x0, y0 = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    ang = rng.uniform(0, 2 * math.pi)
    bend = rng.uniform(-0.5, 0.5)
    t = np.linspace(0, 1, 24)
    xs = x0 + length * t * np.cos(ang + bend * t)
    ys = y0 + length * t * np.sin(ang + bend * t)
    img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(img).line(list(zip(xs.tolist(), ys.tolist())), fill=255, width=int(rng.integers(2, 6)))
    alpha = np.asarray(img.filter(ImageFilter.GaussianBlur(0.6)), np.float32) / 255.0
    target = 255.0 if rng.random() < 0.6 else 0.0
    strength = rng.uniform(0.5, 0.9)
    cur_w[:] = cur_w * (1 - strength * alpha[..., None]) + target * strength * alpha[..., None]
    return alpha


def _stain(cur_w: np.ndarray, rng: np.random.Generator, r: float) -> np.ndarray:
    """A dark translucent stain or leak (a blob, sometimes with a drip below it), slightly glossy."""
    h, w = cur_w.shape[:2]
    alpha, cy, cx = _blob_alpha(rng, h, w, r)
    if rng.random() < 0.5:  # leak: a drip running down
        drip = Image.new("L", (w, h), 0)
        length = rng.uniform(1.0, 3.0) * r
        ImageDraw.Draw(drip).line([(cx, cy), (cx + rng.uniform(-0.2, 0.2) * length, cy + length)], fill=255,
                                  width=max(2, int(r * rng.uniform(0.15, 0.4))))
        alpha = np.maximum(alpha, np.asarray(drip.filter(ImageFilter.GaussianBlur(1.0)), np.float32) / 255.0)
    alpha = ndimage.gaussian_filter(alpha, rng.uniform(0.5, 2.0))
    dark = rng.uniform(0.35, 0.75)
    tint = rng.uniform(0.8, 1.1, 3).astype(np.float32)
    cur_w[:] = cur_w * (1 - dark * alpha[..., None]) + (cur_w * 0.3 * tint) * dark * alpha[..., None]
    if rng.random() < 0.4:  # gloss
        cur_w[:] += 40 * (ndimage.gaussian_filter(alpha, 3) > 0.7)[..., None] * alpha[..., None]
    return alpha


def draw_change(img: np.ndarray, kind: str, donors: list[np.ndarray], rng: np.random.Generator, r: float) -> np.ndarray:
    """Draw one change of ``kind`` (``foreign``, ``displaced``, ``scratch`` or ``stain``) of radius ~``r`` into the
    float RGB image ``img`` in place; returns its alpha (threshold it at :func:`footprint_level` for the label)."""
    if kind == "foreign":
        return _paste_object(img, donors[int(rng.integers(len(donors)))], rng, r)
    if kind == "displaced":
        return _displace(img, rng, r)
    if kind == "scratch":
        return _scratch(img, rng)
    if kind == "stain":
        return _stain(img, rng, r)
    raise ValueError(f"unknown change kind {kind!r}")


def footprint_level(kind: str) -> float:
    """Alpha above which a change of ``kind`` is labelled (thin and translucent changes lower)."""
    return 0.3 if kind in ("scratch", "stain") else 0.5


def _view_matrix(rng: np.random.Generator, jitter: float) -> np.ndarray:
    """View (output) pixel -> world pixel: the centred window, rotated/scaled/shifted/tilted by ``jitter``."""
    ww, wh = _WORLD
    vw, vh = _VIEW
    rot = math.radians(rng.uniform(-3, 3) * jitter)
    s = 1 + rng.uniform(-0.06, 0.06) * jitter
    tx, ty = rng.uniform(-22, 22, 2) * jitter
    c, si = math.cos(rot) * s, math.sin(rot) * s
    to_centre = np.array([[1, 0, -vw / 2], [0, 1, -vh / 2], [0, 0, 1]], np.float64)
    rs = np.array([[c, -si, 0], [si, c, 0], [0, 0, 1]], np.float64)
    back = np.array([[1, 0, ww / 2 + tx], [0, 1, wh / 2 + ty], [0, 0, 1]], np.float64)
    m = back @ rs @ to_centre
    m[2, :2] = rng.uniform(-1.5e-4, 1.5e-4, 2) * jitter
    return m


def _warp(world: np.ndarray, m: np.ndarray, order: int = 1) -> np.ndarray:
    """Sample ``world`` at ``m @ view pixel`` for every view pixel (pixel centres)."""
    vw, vh = _VIEW
    ys, xs = np.mgrid[0:vh, 0:vw].astype(np.float64)
    pts = m @ np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5, np.ones(xs.size)])
    wx, wy = pts[0] / pts[2] - 0.5, pts[1] / pts[2] - 0.5
    if world.ndim == 2:
        return ndimage.map_coordinates(world, [wy, wx], order=order, mode="reflect").reshape(vh, vw)
    return np.stack([ndimage.map_coordinates(world[..., c], [wy, wx], order=order, mode="reflect").reshape(vh, vw)
                     for c in range(world.shape[2])], -1)


def _parallax(img: np.ndarray, rng: np.random.Generator, amp: float) -> np.ndarray:
    """Smooth random displacement (up to ``amp`` px): depth the similarity model cannot explain."""
    h, w = img.shape[:2]
    coarse = rng.normal(0, 1, (2, 4, 5))
    field = np.stack([np.asarray(Image.fromarray(c.astype(np.float32)).resize((w, h), Image.Resampling.BICUBIC)) for c in coarse])
    field *= amp / max(1e-6, np.abs(field).max())
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([ndimage.map_coordinates(img[..., c], [ys + field[0], xs + field[1]], order=1, mode="reflect")
                     for c in range(3)], -1)


def _nuisance(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Night-to-night appearance change: illumination, shadow, highlight, blur, noise (no label)."""
    h, w = img.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, 2 * math.pi)
    grad = (np.cos(a) * (xs / w - 0.5) + np.sin(a) * (ys / h - 0.5)) * rng.uniform(0, 0.6)
    if rng.random() < 0.4:  # lamp: radial falloff
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        grad = grad - rng.uniform(0, 0.5) * (((ys - cy) ** 2 + (xs - cx) ** 2) / (h * h + w * w))
    out = img * (1 + grad)[..., None] * rng.uniform(0.7, 1.3)
    gamma = rng.uniform(0.75, 1.35)
    out = 255.0 * np.clip(out / 255.0, 0, 1) ** gamma
    if rng.random() < 0.3:  # cast shadow: a large soft-edged dark polygon
        n = int(rng.integers(3, 6))
        pts = [(float(rng.uniform(-0.3, 1.3) * w), float(rng.uniform(-0.3, 1.3) * h)) for _ in range(n)]
        sh = Image.new("L", (w, h), 0)
        ImageDraw.Draw(sh).polygon(pts, fill=255)
        s = np.asarray(sh.filter(ImageFilter.GaussianBlur(rng.uniform(4, 20))), np.float32) / 255.0
        out = out * (1 - rng.uniform(0.2, 0.5) * s)[..., None]
    if rng.random() < 0.2:  # specular highlight
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, 25)
        spot = np.exp(-(((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * r * r)))
        out = out + rng.uniform(30, 90) * spot[..., None]
    if rng.random() < 0.5:
        out = ndimage.gaussian_filter(out, (rng.uniform(0.3, 1.3),) * 2 + (0,))
    out = out + rng.normal(0, rng.uniform(0, 6), out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def _jpeg(img: np.ndarray, rng: np.random.Generator, size: tuple[int, int] | None = None) -> bytes:
    pil = Image.fromarray(img)
    if size is not None:
        pil = pil.resize(size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=int(rng.integers(60, 96)))
    return buf.getvalue()


def synth_pair(photo: np.ndarray, donors: list[np.ndarray], rng: np.random.Generator, *,
               p_change: float = 0.75, max_changes: int = 3, jitter: float = 1.0) -> SynthPair:
    """A cur/his pair of ``photo`` (views 512x384 JPEG) with 0..``max_changes`` labelled changes.

    ``donors`` are other photographs (foreign objects are cut from them); ``jitter`` scales the viewpoint
    change between the two views (1: up to ~3 degrees, 6 %, 22 px and a slight tilt).
    """
    world = _crop_world(photo, rng)
    cur_w, his_w = world.copy(), world.copy()
    mask_w = np.zeros(world.shape[:2], np.float32)
    kinds: list[str] = []
    n = int(rng.integers(1, max_changes + 1)) if rng.random() < p_change else 0
    side = min(_WORLD)
    for _ in range(n):
        kind = str(rng.choice(CHANGE_KINDS, p=[0.3, 0.15, 0.15, 0.2, 0.2]))
        r = side * math.exp(rng.uniform(math.log(0.02), math.log(0.16)))  # many sizes, small ones often
        before_c, before_h = cur_w.copy(), his_w.copy()
        if kind == "missing":
            alpha = _paste_object(his_w, donors[int(rng.integers(len(donors)))], rng, r)
        else:
            alpha = draw_change(cur_w, kind, donors, rng, r)
        footprint = alpha > footprint_level(kind)
        visible = np.abs(cur_w - his_w).mean(axis=2)
        if not footprint.any() or float(visible[footprint].mean()) < _MIN_VISIBLE:
            cur_w, his_w = before_c, before_h  # invisible: drop it rather than label it
            continue
        mask_w = np.maximum(mask_w, footprint.astype(np.float32))
        kinds.append(kind)
    m_cur = _view_matrix(rng, 0.15 * jitter)  # cur: near the centre
    m_his = _view_matrix(rng, jitter)
    cur = _warp(cur_w, m_cur)
    his = _warp(his_w, m_his)
    if rng.random() < 0.5:
        his = _parallax(his, rng, rng.uniform(0.3, 2.0))
    mask = _warp(mask_w, m_cur, order=0) > 0.5
    cur_u8, his_u8 = _nuisance(cur, rng), _nuisance(his, rng)
    his_size = None
    if rng.random() < 0.15:  # history taken at another resolution of the same view
        f = rng.uniform(0.6, 0.9)
        his_size = (int(_VIEW[0] * f), int(_VIEW[1] * f))
    return SynthPair(_jpeg(cur_u8, rng), _jpeg(his_u8, rng, his_size), mask, kinds)
