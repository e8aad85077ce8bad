"""The background of a region's canonical scene: real textures tinted to an undercarriage, panels, grime, rust, dust.

Two or three textures (``brick``, ``gravel``, ``grass``, ``moon`` as the main one; ``camera``, ``coffee``,
``rocket``, ``chelsea``, ``astronaut``, ``immunohistochemistry`` as secondary ones) are cropped, rotated,
mirror-tiled and rescaled, mixed with region-specific weights at a low contrast, then tinted to a dark greyish-brown
palette with body panels of different tones separated by grooved seams, and low-frequency grime, rust and dust
patches (fractal noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._constants import _F32, _PRIMARY_TEXTURES, _PRIMARY_WEIGHTS, _SECONDARY_TEXTURES
from ._textures import _fbm, _resize_f, _seams, _smoothstep, _tex_field


@dataclass
class _Background:
    """A canonical-frame background and the fields the parts drawn on it share."""

    rgb: np.ndarray  # (Hc, Wc, 3) float32
    grime: np.ndarray  # (Hc, Wc) float32 multiplicative grime field, shared by the parts
    mean: np.ndarray  # (3,) mean colour, toward which part colours are dirtied
    ptex: list[np.ndarray]  # two fine real textures for the parts' albedo


def _render_background(rng: np.random.Generator, Wc: int, Hc: int, k: float) -> _Background:
    """Draw the background of a Wc x Hc canonical frame at length scale ``k``."""
    prim = str(rng.choice(_PRIMARY_TEXTURES, p=_PRIMARY_WEIGHTS))
    others = [n for n in _PRIMARY_TEXTURES + _SECONDARY_TEXTURES if n != prim]
    acc = _tex_field(rng, prim, Wc, Hc, rng.uniform(0.9, 2.2) * k)
    for name in rng.choice(others, size=int(rng.integers(1, 3)), replace=False):
        acc += rng.uniform(0.25, 0.6) * _tex_field(rng, str(name), Wc, Hc, rng.uniform(0.8, 3.0) * k)
    acc *= rng.uniform(0.12, 0.26) / (acc.std() + 1e-6)  # log-luminance contrast of the texture
    # low-frequency fields at 1/4 resolution: grime, rust and dust
    lw, lh = max(8, Wc // 4), max(8, Hc // 4)
    grime = np.exp(rng.uniform(0.12, 0.25) * _resize_f(_fbm(rng, lw, lh, 95 * k, octaves=4), Wc, Hc)).astype(_F32)
    rust = _resize_f(_smoothstep(0.7, 1.7, _fbm(rng, lw, lh, 65 * k, octaves=3)) * rng.uniform(0.2, 0.55), Wc, Hc)
    dust = _resize_f(_smoothstep(0.8, 1.8, _fbm(rng, lw, lh, 50 * k, octaves=3)) * rng.uniform(0.15, 0.45), Wc, Hc)
    # large body panels: a tone per panel and grooved seams between them
    gx, tx = _seams(rng, Wc, k)
    gy, ty = _seams(rng, Hc, k)
    tone = rng.uniform(0.82, 1.18, (len(ty) - 1, len(tx) - 1)).astype(_F32)
    lum = np.exp(acc)
    lum *= grime
    lum *= tone[np.searchsorted(ty[1:-1], np.arange(Hc), side="right")][:, np.searchsorted(tx[1:-1], np.arange(Wc), side="right")]
    lum *= gy[:, None] * gx[None, :]
    lum *= rng.uniform(40, 72)
    tint = np.array([1.0, rng.uniform(0.9, 0.97), rng.uniform(0.8, 0.9)], _F32) * rng.uniform(0.95, 1.05)
    rust_c, dust_c = np.array([1.2, 0.92, 0.72], _F32), np.array([1.35, 1.3, 1.2], _F32)
    w_rust = rust * (1 - dust)
    w_base = (1 - rust) * (1 - dust)
    rgb = np.empty((Hc, Wc, 3), _F32)
    for c in range(3):  # lum * (tint, rust, dust mix), channel by channel
        rgb[..., c] = lum * (tint[c] * w_base + rust_c[c] * w_rust + dust_c[c] * dust)
    mean = rgb[::13, ::13].reshape(-1, 3).mean(0)
    # two shared albedo textures for the parts (fine-grained real textures)
    ptex = [_tex_field(rng, str(rng.choice(("gravel", "moon", "grass"))), Wc, Hc, rng.uniform(0.3, 0.7) * k) for _ in range(2)]
    return _Background(rgb.astype(_F32), grime, mean, ptex)
