"""The nuisances a robot camera meets between nights: viewpoint (warp), illumination, optics and sensor noise.

Per capture, seeded by ``(seed, night, train, car, region)``; ranges at 1920 x 1200, lengths scale with the image
diagonal:

* viewpoint: translation uniform in +-40 px per axis, rotation +-2 deg, scale 0.97-1.03, about the image centre;
  applied with ``PIL.Image.transform(AFFINE, BILINEAR)`` from the canonical frame (the mask goes through the same
  transform with NEAREST, so it is exact in the cur frame). ``DemoSpec(viewpoint=False)`` turns it off (identity
  crop);
* illumination: gain 0.72-1.3, per-channel white balance +-5 %, gamma 0.8-1.25, a linear gradient of up to +-20 %
  across the half diagonal in a random direction, the camera's vignetting (10-30 % in the corners, a property of the
  region's camera, +-5 % between captures), a soft lamp hot spot of up to +30 %, and uneven light (fractal noise, up
  to ~+-6 %);
* optics: defocus blur (a box blur of radius 0.3-0.9 px, in 40 % of captures);
* sensor: signal-dependent luma noise (read noise 0.8-2.6 levels, shot term 0.02-0.14 x level) plus low-frequency
  chroma noise (blotches of ~8 px, 0.3-1.2 levels at a mid-grey of 60).

The pinned reference of a region uses a neutral viewpoint (identity), neutral light (only the camera's vignetting)
and low noise, and no blur.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageFilter

from ._constants import _F32
from ._geometry import _clip_boxes, _invert_affine
from ._textures import _fbm, _resize_f


def _viewpoint(rng: np.random.Generator, k: float) -> tuple[float, float, float, float]:
    """(tx, ty, rotation rad, scale) at length scale ``k``: always draws the same numbers from ``rng``."""
    tx, ty = rng.uniform(-40, 40, 2) * k
    rot = math.radians(rng.uniform(-2, 2))
    s = rng.uniform(0.97, 1.03)
    return float(tx), float(ty), rot, float(s)


def _affine(tx: float, ty: float, rot: float, s: float, W: int, H: int, m: int) -> tuple[float, ...]:
    """PIL AFFINE data mapping a pixel of a W x H cur frame to the canonical frame of margin ``m``:
    p_c = c_c + t + s R(rot) (p - c)."""
    a, b = s * math.cos(rot), -s * math.sin(rot)
    d, e = s * math.sin(rot), s * math.cos(rot)
    cx, cy = W / 2, H / 2
    c = m + cx + tx - (a * cx + b * cy)
    f = m + cy + ty - (d * cx + e * cy)
    return (a, b, c, d, e, f)


def _identity(m: int) -> tuple[float, ...]:
    """PIL AFFINE data of the neutral viewpoint: a crop of the canonical frame of margin ``m``."""
    return (1.0, 0.0, float(m), 0.0, 1.0, float(m))


def _warp(a: np.ndarray, data: tuple[float, ...], W: int, H: int, m: int) -> np.ndarray:
    """Canonical frame -> W x H cur frame, bilinear (an exact crop for the identity viewpoint)."""
    if data == _identity(m):
        return np.ascontiguousarray(a[m : m + H, m : m + W])
    return np.asarray(Image.fromarray(a).transform((W, H), Image.Transform.AFFINE, data, Image.Resampling.BILINEAR))


def _warp_mask(msk: np.ndarray, x0: int, y0: int, data: tuple[float, ...], W: int, H: int, m: int) -> np.ndarray:
    """A boolean canonical-frame window at (x0, y0) -> uint8 0/255 mask of the cur frame (NEAREST, same affine)."""
    out = np.zeros((H, W), np.uint8)
    h, w = msk.shape
    if data == _identity(m):
        cl = _clip_boxes(x0 - m, y0 - m, h, w, (0, 0, W, H))
        if cl is not None:
            (dy, dx), (py, px) = cl
            out[dy, dx][msk[py, px]] = 255
        return out
    a, b, c, d, e, f = data
    ia, ib, ic, id_, ie, if_ = _invert_affine(data)
    cx = np.array([x0, x0 + w, x0, x0 + w], float)
    cy = np.array([y0, y0, y0 + h, y0 + h], float)
    px, py = ia * cx + ib * cy + ic, id_ * cx + ie * cy + if_
    bx0, by0 = max(int(math.floor(px.min())) - 2, 0), max(int(math.floor(py.min())) - 2, 0)
    bx1, by1 = min(int(math.ceil(px.max())) + 2, W), min(int(math.ceil(py.max())) + 2, H)
    if bx0 >= bx1 or by0 >= by1:
        return out
    sub = (a, b, a * bx0 + b * by0 + c - x0, d, e, d * bx0 + e * by0 + f - y0)
    src = Image.fromarray(np.where(msk, 255, 0).astype(np.uint8))
    out[by0:by1, bx0:bx1] = np.asarray(src.transform((bx1 - bx0, by1 - by0), Image.Transform.AFFINE, sub, Image.Resampling.NEAREST))
    return out


def _photometric(rng: np.random.Generator, img: np.ndarray, k: float, vignetting: float, neutral: bool) -> np.ndarray:
    """Illumination, blur and sensor noise of one capture over a uint8 RGB image; ``neutral``: the reference's."""
    H, W = img.shape[:2]
    gain, gamma = rng.uniform(0.72, 1.3), rng.uniform(0.8, 1.25)
    wb = 1 + rng.uniform(-0.05, 0.05, 3)
    grad_a, grad_phi = rng.uniform(-0.2, 0.2), rng.uniform(0, 2 * math.pi)
    vign, spot_h = vignetting + rng.uniform(-0.05, 0.05), rng.uniform(0, 0.3)
    spot_c, spot_s = rng.uniform(-0.6, 0.6, 2), rng.uniform(0.35, 0.9)
    uneven = rng.uniform(0, 0.04)
    blur = rng.uniform(0.3, 0.9) if rng.random() < 0.4 else 0.0
    read, shot, chroma = rng.uniform(0.8, 2.6), rng.uniform(0.02, 0.14), rng.uniform(0.3, 1.2)
    if neutral:
        gain, gamma, wb = 1.0, 1.0, np.ones(3)
        grad_a = spot_h = uneven = blur = 0.0
        vign = vignetting
        read, shot, chroma = 0.8, 0.03, 0.3
    # illumination field at 1/8 resolution, upsampled
    fw, fh = max(8, W // 8), max(8, H // 8)
    half_diag = math.hypot(W, H) / 2
    X = ((np.arange(fw, dtype=_F32) + 0.5) * W / fw - W / 2)[None, :] / half_diag
    Y = ((np.arange(fh, dtype=_F32) + 0.5) * H / fh - H / 2)[:, None] / half_diag
    F = gain * (1 + grad_a * (X * math.cos(grad_phi) + Y * math.sin(grad_phi)))
    F = F * (1 - vign * (X * X + Y * Y))
    F = F * (1 + spot_h * np.exp(-((X - spot_c[0]) ** 2 + (Y - spot_c[1]) ** 2) / (2 * spot_s**2)))
    F = F * np.exp(uneven * _fbm(rng, fw, fh, max(2.0, 250 * k / 8), octaves=2))
    Fg = np.power(np.maximum(F, 1e-3), gamma).astype(_F32)
    # low-frequency chroma noise, folded into the field as a per-channel gain (levels relative to ~60)
    cn = rng.standard_normal((3, fh, fw)).astype(_F32) * (chroma / 60)
    Fg = np.stack([_resize_f(Fg * (1 + cn[c]), W, H) for c in range(3)], -1)
    # tone curve and white balance as a LUT (gamma commutes with the illumination gain: (gx)^y = g^y x^y)
    v = np.arange(256, dtype=np.float64) / 255
    lut = np.concatenate([np.clip(255 * np.power(v * wb[c], gamma), 0, 255) for c in range(3)])
    pim = Image.fromarray(img)
    if blur * k >= 0.25:
        pim = pim.filter(ImageFilter.BoxBlur(blur * k))
    base = np.asarray(pim.point(np.rint(lut).astype(np.uint8).tolist()))
    x = base.astype(_F32)
    x *= Fg
    sig_lut = np.sqrt(read * read + shot * np.arange(256, dtype=_F32)).astype(_F32)
    n = rng.standard_normal((H, W), dtype=_F32)
    n *= sig_lut[base[..., 1]]
    n += 0.5  # round, not truncate, below
    x += n[..., None]
    np.clip(x, 0, 255, out=x)
    return x.astype(np.uint8)
