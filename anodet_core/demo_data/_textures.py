"""Real photographic textures (bundled with scikit-image, loaded offline), fractal noise and panel seams."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image

from ._constants import _F32, _PRIMARY_TEXTURES, _SECONDARY_TEXTURES


@lru_cache(maxsize=1)
def _textures() -> dict[str, np.ndarray]:
    """The grey-level textures by name, normalised to [0, 1] (loaded once per process)."""
    from skimage import data

    out = {}
    for name in _PRIMARY_TEXTURES + _SECONDARY_TEXTURES:
        a = np.asarray(getattr(data, name)())
        if a.ndim == 3:
            a = a[..., :3].astype(_F32) @ np.array([0.299, 0.587, 0.114], _F32)
        a = a.astype(_F32)
        a = (a - a.min()) / max(float(a.max() - a.min()), 1e-6)
        out[name] = np.ascontiguousarray(a)
    return out


def _resize_f(a: np.ndarray, w: int, h: int, resample=Image.Resampling.BILINEAR) -> np.ndarray:
    """A float32 field resized to (w, h) by Pillow."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(a, dtype=_F32)).resize((int(w), int(h)), resample))


def _tex_field(rng: np.random.Generator, name: str, w: int, h: int, scale: float) -> np.ndarray:
    """A (h, w) zero-mean unit-std crop of a real texture, rotated, mirror-tiled and rescaled by ``scale``."""
    src = _textures()[name]
    src = np.rot90(src, int(rng.integers(4)))
    if rng.random() < 0.5:
        src = src[:, ::-1]
    # render a tile of at most ~1024 source px and mirror-tile it (large fields at small scales stay cheap)
    tw, th = min(w, max(8, int(1024 * scale))), min(h, max(8, int(1024 * scale)))
    sw, sh = max(4, int(math.ceil(tw / scale))), max(4, int(math.ceil(th / scale)))
    ox, oy = int(rng.integers(src.shape[1])), int(rng.integers(src.shape[0]))
    big = np.pad(src, ((0, max(0, oy + sh - src.shape[0])), (0, max(0, ox + sw - src.shape[1]))), mode="symmetric")
    a = _resize_f(big[oy : oy + sh, ox : ox + sw], tw, th)
    if (tw, th) != (w, h):
        a = np.pad(a, ((0, h - th), (0, w - tw)), mode="symmetric")
    return (a - a.mean()) / (a.std() + 1e-6)


def _fbm(rng: np.random.Generator, w: int, h: int, cell: float, octaves: int = 3, persistence: float = 0.5) -> np.ndarray:
    """Smooth fractal noise, roughly unit std, features of about ``cell`` px and finer octaves."""
    out = np.zeros((h, w), _F32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        c = max(2.0, cell / 2**o)
        g = rng.standard_normal((int(h / c) + 3, int(w / c) + 3)).astype(_F32)
        out += amp * _resize_f(g, w, h, Image.Resampling.BICUBIC)
        total += amp * amp
        amp *= persistence
    return out / math.sqrt(total) * 1.6


def _seams(rng: np.random.Generator, n: int, k: float) -> tuple[np.ndarray, np.ndarray]:
    """1-D luminance profile with 0-2 grooved panel seams across an axis of length n; seam positions with 0 and n."""
    prof = np.ones(n, _F32)
    cuts = np.sort(rng.uniform(0.1, 0.9, int(rng.integers(0, 3)))) * n
    x = np.arange(n, dtype=_F32) + 0.5
    for c in cuts:
        w = rng.uniform(1.5, 4) * k + 0.5
        d = (x - c) / w
        prof *= 1 - rng.uniform(0.35, 0.6) * np.exp(-d * d) + 0.15 * np.exp(-((d - 1.5) ** 2))  # dark groove, lit lip
    return prof, np.concatenate([[0.0], cuts, [float(n)]])


def _smoothstep(a: float, b: float, x: np.ndarray) -> np.ndarray:
    """Hermite step from 0 at ``a`` to 1 at ``b``."""
    t = np.clip((x - a) / (b - a), 0.0, 1.0)
    return t * t * (3 - 2 * t)
