"""Unsupervised training of a single-image model on normal images (maximum likelihood / reconstruction / memory).

Random flips as augmentation, seeded, with a wall-time limit; only trainable parameters are optimised
(CSA-Flow's backbone is frozen).  CSA-Flow uses its paper optimiser (``csaflow.make_optimizer``: Adam at the config's
lr, the paper's 2e-4, 1e-3 in the lite preset,
weight decay 1e-5, betas (0.5, 0.9), eps 1e-4) and gradient-norm clipping at 1; AnoViT uses Adam at its config's lr (1e-4:
the paper names no optimiser, 1e-4 is the usual ViT auto-encoder setting; 1e-3 in the lite preset).  PatchCore and PaDiM are not
trained by gradient: their ``fit`` builds the memory bank / the Gaussians in one pass over the images, unflipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..training import flip_augment
from .archs import check_arch, config_input_size, to_input

__all__ = ["ANOVIT_LR", "train_single_image"]

ANOVIT_LR: float = 1e-4  # AnoViTConfig.lr's default
_CACHE_BYTES: int = 1 << 30  # CSA-Flow training caches frozen-backbone features up to this size


class _FeatureCache:
    """A frozen backbone in eval mode (CSA-Flow's, AnoViT's feature stem) gives the same features of (image, flip)
    every epoch: compute them once and reuse them in later epochs (exact, not an approximation), up to a memory
    budget. ``compute(x)`` returns the features of a batch as a list of levels."""

    def __init__(self, compute: Callable[[torch.Tensor], list[torch.Tensor]], budget: int = _CACHE_BYTES) -> None:
        self.compute = compute
        self.budget = budget
        self.used = 0
        self.store: dict[tuple[int, int], list[torch.Tensor]] = {}

    def features(self, x: torch.Tensor, keys: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        """Backbone features of the batch ``x``, whose samples are ``keys`` = (image index, flip)."""
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        fresh: dict[int, list[torch.Tensor]] = {}
        if missing:
            feats = self.compute(x[missing])
            for j, i in enumerate(missing):
                one = [f[j : j + 1] for f in feats]
                fresh[i] = one
                size = sum(f.numel() * f.element_size() for f in one)
                if self.used + size <= self.budget:
                    self.store[keys[i]] = [f.clone() for f in one]
                    self.used += size
        per_image = [fresh[i] if i in fresh else self.store[k] for i, k in enumerate(keys)]
        return [torch.cat(level, dim=0) for level in zip(*per_image)]


def train_single_image(
    arch: str,
    normal: np.ndarray,
    *,
    preset: str | None = "lite",
    overrides: dict[str, Any] | None = None,
    epochs: int = 40,
    max_seconds: float = float("inf"),
    batch_size: int = 8,
    lr: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
    """Train ``arch`` unsupervised on the normal images ``normal`` (uint8 (N, S, S, 3), S = the input size).

    Each sample gets a random flip (none / vertical / horizontal / both).  Seeded: model init, batch order
    and flips depend only on ``seed`` (on the CPU the weights are reproducible bit for bit).  Training stops
    after ``epochs`` or as soon as ``max_seconds`` of wall time have passed (checked after every step); the
    final weights are returned (eval mode) with the per-epoch history ``{epoch, loss, steps, seconds}``.
    """
    from tqdm import tqdm

    from ..models import create_model
    from ..progress import bars_enabled

    check_arch(arch)
    overrides = dict(overrides or {})
    size = config_input_size(arch, preset, overrides)
    normal = np.asarray(normal)
    if normal.ndim != 4 or normal.shape[1:] != (size, size, 3) or normal.dtype != np.uint8:
        raise ValueError(f"normal images must be uint8 (N, {size}, {size}, 3), got {normal.dtype} {normal.shape}")
    n = len(normal)
    if n == 0:
        raise ValueError("no normal images to train on")
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model: Any = create_model(arch, preset=preset, **overrides).to(device)  # CSAFlow, AnoViT, PatchCore or PaDiM
    if callable(getattr(model, "fit", None)):  # memory-based (PatchCore, PaDiM): one pass, no gradient
        t0 = time.perf_counter()
        model.eval().fit(to_input(normal[s : s + batch_size], model, device) for s in range(0, n, batch_size))
        rec = {"epoch": 1, "loss": float("nan"), "steps": -(-n // batch_size), "seconds": time.perf_counter() - t0}
        if on_epoch:
            on_epoch(rec)
        return model, [rec]
    params = [p for p in model.parameters() if p.requires_grad]
    clip: float | None
    if arch == "csaflow":
        from ..models import csaflow as csa

        opt = csa.make_optimizer(model)
        if lr is not None:
            for g in opt.param_groups:
                g["lr"] = lr
        clip = csa.GRAD_CLIP_NORM
        flow_cache = _FeatureCache(model.backbone_features)
        cache: _FeatureCache | None = flow_cache
        if model.cfg.normalise_features:  # the unflipped training images' features, cached for the epochs too
            model.fit_feature_stats([flow_cache.features(to_input(normal[s : s + batch_size], model, device),
                                                    [(i, 0) for i in range(s, min(n, s + batch_size))])
                                     for s in range(0, n, batch_size)])

        def loss_of(feats: list[torch.Tensor]) -> torch.Tensor:
            return model.loss_from(*model.flow(model.attend(feats)))
    else:
        opt = torch.optim.Adam(params, lr=model.cfg.lr if lr is None else lr)
        clip = None
        cache = None
        if model.stem is not None:  # AnoViT's frozen feature stem: its targets are cached like CSA-Flow's features
            if model.cfg.normalise_features:  # statistics first: the cached targets are standardised with them
                with torch.no_grad():
                    model.fit_feature_stats([model.stem_features(to_input(normal[s : s + batch_size], model, device))
                                             for s in range(0, n, batch_size)])
            cache = _FeatureCache(lambda x: [model.target(x)])

        def loss_of(feats: list[torch.Tensor]) -> torch.Tensor:
            return model.feature_loss(feats[0])
    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    out_of_time = False
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=gen).tolist()
        flips = torch.randint(0, 4, (n,), generator=gen).tolist()
        if not getattr(model.cfg, "train_flips", True):  # a model whose config turns the flips off sees images as captured
            flips = [0] * n
        losses: list[float] = []
        bar = tqdm(range(0, n, batch_size), desc=f"{arch} epoch {epoch + 1}/{epochs}",
                   disable=not bars_enabled(progress), leave=False)
        for s in bar:
            idx = order[s : s + batch_size]
            x = to_input(normal[idx], model, device)
            x = torch.stack([flip_augment(xi, flips[i]) for xi, i in zip(x, idx)])
            opt.zero_grad(set_to_none=True)
            if cache is not None:
                loss = loss_of(cache.features(x, [(i, flips[i]) for i in idx]))
            else:
                loss = model.loss(x)
            if not torch.isfinite(loss):
                raise ValueError(f"{arch} training diverged: non-finite loss at epoch {epoch + 1} (lower --lr?)")
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if time.perf_counter() - t0 > max_seconds:
                out_of_time = True
                break
        rec = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "steps": len(losses),
               "seconds": time.perf_counter() - t0}
        history.append(rec)
        if on_epoch:
            on_epoch(rec)
        if out_of_time:
            break
    model.eval()
    if arch == "anovit" and model.cfg.position_stats and cache is not None:  # the trained model's errors, unflipped
        model.fit_error_stats([cache.features(to_input(normal[s : s + batch_size], model, device),
                                              [(i, 0) for i in range(s, min(n, s + batch_size))])[0]
                               for s in range(0, n, batch_size)])
    return model, history
