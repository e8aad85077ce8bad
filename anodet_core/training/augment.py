"""Training augmentations on [-1, 1] batches: the paper's flips, photometric jitter, pasted synthetic changes.

Every random draw comes from the caller's ``torch.Generator``, so a seeded run (and a resumed one) repeats.
"""

from __future__ import annotations

import math

import torch

AUGMENTATIONS = ("identity", "vflip", "hflip", "rot180")


def flip_augment(x: torch.Tensor, which: int) -> torch.Tensor:
    """0 identity, 1 vertical flip, 2 horizontal flip, 3 both (= 180° rotation): the paper's four augmentations."""
    if which == 1:
        return x.flip(-2)
    if which == 2:
        return x.flip(-1)
    if which == 3:
        return x.flip(-2, -1)
    return x


def photometric(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random gain and gamma per sample on [-1, 1] images."""
    b = x.shape[0]
    gain = torch.empty(b, 1, 1, 1).uniform_(0.75, 1.25, generator=gen).to(x.device)
    gamma = torch.empty(b, 1, 1, 1).uniform_(0.8, 1.25, generator=gen).to(x.device)
    y = ((x + 1) / 2).clamp(0, 1).pow(gamma) * gain
    return y.clamp(0, 1) * 2 - 1


def _blob(h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """A random soft-edged blob (rotated ellipse with a wobbly border), alpha in [0, 1], size 3-25 % of the side."""
    side = min(h, w)
    r = float(torch.empty(1).uniform_(0.015, 0.12, generator=gen)) * side
    aspect = float(torch.empty(1).uniform_(0.25, 1.0, generator=gen))
    cy, cx = (float(torch.rand(1, generator=gen)) * (h - 2 * r) + r), (float(torch.rand(1, generator=gen)) * (w - 2 * r) + r)
    theta = float(torch.rand(1, generator=gen)) * math.pi
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32) - cy, torch.arange(w, dtype=torch.float32) - cx, indexing="ij")
    u = xx * math.cos(theta) + yy * math.sin(theta)
    v = -xx * math.sin(theta) + yy * math.cos(theta)
    ang = torch.atan2(v, u)
    k = torch.randint(2, 6, (1,), generator=gen).item()
    wobble = 1 + 0.25 * torch.sin(k * ang + float(torch.rand(1, generator=gen)) * 6.28)
    d = torch.sqrt((u / r) ** 2 + (v / (r * aspect)) ** 2) / wobble
    return (1.5 - d * 1.5 / 1.0).clamp(0, 1) ** 0.5 * (d < 1)


def synthesize(cur: torch.Tensor, his: torch.Tensor, y: torch.Tensor, gen: torch.Generator, p: float) -> None:
    """In place: with probability ``p`` per sample, paste a synthetic change into cur or his and mark it.

    Content is a patch of another sample (foreign texture), a dark stain or a bright/dark flat object; the
    network is symmetric in (cur, his), so pasting into his stands for a part that went missing.
    """
    b, _, h, w = cur.shape
    for i in range(b):
        if float(torch.rand(1, generator=gen)) >= p:
            continue
        alpha = _blob(h, w, gen).to(cur.device)
        kind = torch.randint(0, 3, (1,), generator=gen).item()
        target = cur if torch.rand(1, generator=gen).item() < 0.7 else his
        if kind == 0:  # texture from elsewhere (another sample, rolled)
            j = int(torch.randint(0, b, (1,), generator=gen).item())
            sy, sx = int(torch.randint(0, h, (1,), generator=gen).item()), int(torch.randint(0, w, (1,), generator=gen).item())
            content = torch.roll(cur[j], shifts=(sy, sx), dims=(1, 2))
        elif kind == 1:  # stain: darker, slightly glossy version of the background
            content = target[i] * float(torch.empty(1).uniform_(0.2, 0.7, generator=gen)) - 0.3
        else:  # flat object with noise
            level = float(torch.empty(1).uniform_(-1, 1, generator=gen))
            content = torch.full_like(target[i], level) + 0.1 * torch.randn(target[i].shape, generator=gen).to(cur.device)
        target[i] = target[i] * (1 - alpha) + content.clamp(-1, 1) * alpha
        y[i, 0] = torch.maximum(y[i, 0], (alpha > 0.5).float())
