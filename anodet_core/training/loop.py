"""The training loop: the paper's protocol with validation every epoch, best-F1 weights and resumable checkpoints."""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..scoring.predictor import to_input
from .augment import flip_augment, photometric, synthesize
from .config import TrainConfig, TrainResult
from .data import PairArrays
from .evaluate import evaluate_arrays, pixel_metrics


def _dice_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Soft Dice over the batch: gives the rare anomaly pixels the weight plain BCE denies them."""
    p = torch.sigmoid(logits)
    inter = (p * y).sum()
    return 1 - (2 * inter + 1) / (p.sum() + y.sum() + 1)


_VAL_KEYS = ("precision", "recall", "f1", "iou", "auc")


def _val_score(m: dict[str, float]) -> tuple[float, float]:
    """Best F1; AUC breaks ties (early on every epoch can have F1 = 0 while ranking already improves)."""
    return m["f1"], m["auc"] if m["auc"] == m["auc"] else -1.0


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights (the best epoch's, kept while training goes on)."""
    return copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})


def _val_record(m: dict[str, float]) -> dict[str, float]:
    return {f"val_{k}": v for k, v in m.items() if k in _VAL_KEYS}


def train_pairs(
    model: torch.nn.Module,
    train: PairArrays,
    val: PairArrays | None,
    cfg: TrainConfig,
    *,
    progress: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    checkpoint: str | None = None,
    start_is_candidate: bool = False,
) -> TrainResult:
    """Train with the paper's protocol; validate every epoch and keep the best-F1 weights.

    ``start_is_candidate`` (fine-tuning a pretrained model): the starting weights are validated too, as epoch 0,
    so a fine-tune that only makes the model worse on validation returns the model it started from.

    With ``checkpoint`` (a local file) the state after every epoch is saved there, and a later call with the
    same file resumes after the last finished epoch: same weights, optimiser, random streams and history, so
    an interrupted run ends where an uninterrupted one would. The wall-time limit counts both sessions.
    """
    from tqdm import tqdm

    from ..progress import bars_enabled

    if len(train) == 0:
        raise ValueError("no training pairs")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.to(cfg.device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    history: list[dict[str, Any]] = []
    best: tuple[tuple[float, float], int, dict, dict] = ((-math.inf, -math.inf), -1, {}, {})
    n = len(train)
    first_epoch, elapsed_before = 0, 0.0
    if checkpoint and os.path.exists(checkpoint):
        ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        gen.set_state(ck["generator"])
        torch.set_rng_state(ck["torch_rng"])
        history = ck["history"]
        best = (tuple(ck["best_score"]), ck["best_epoch"], ck["best_state"], ck["best_val"])
        first_epoch, elapsed_before = ck["epoch"], ck["elapsed"]
    t_start = time.perf_counter() - elapsed_before
    if start_is_candidate and first_epoch == 0 and val is not None and len(val):
        m = evaluate_arrays(model, val, cfg.device)
        best = (_val_score(m), 0, _snapshot(model), {"epoch": 0, "steps": 0, **_val_record(m)})
    if cfg.crop and (cfg.crop % 16 or cfg.crop > train.cur.shape[1]):
        raise ValueError(f"crop must be a multiple of 16 and at most {train.cur.shape[1]}, got {cfg.crop}")
    if cfg.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}: constant | cosine")
    per_epoch = max(1, n // cfg.batch_size)
    total_steps = cfg.max_steps or cfg.epochs * per_epoch
    step = sum(int(h.get("steps", 0)) for h in history)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    for epoch in range(first_epoch, cfg.epochs):
        if cfg.max_steps and step >= cfg.max_steps:
            break
        model.train()
        order = torch.randperm(n, generator=gen).tolist()
        losses = []
        bar = tqdm(range(0, n, cfg.batch_size), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not bars_enabled(progress),
                   leave=False)
        for s in bar:
            idx = order[s : s + cfg.batch_size]
            if len(idx) < 2 and n >= 2:  # BatchNorm needs > 1 sample; the leftover joins the next epoch
                continue
            if cfg.max_steps and step >= cfg.max_steps:
                break
            if cfg.lr_schedule == "cosine":
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total_steps)))
            cur = to_input(train.cur[idx], cfg.device, False)
            his = to_input(train.his[idx], cfg.device, False)
            y = torch.from_numpy(train.mask[idx]).float().unsqueeze(1).to(cfg.device)
            if cfg.crop and cfg.crop < cur.shape[-1]:
                oy, ox = (int(v) for v in torch.randint(0, cur.shape[-1] - cfg.crop + 1, (2,), generator=gen))
                win = (slice(None), slice(None), slice(oy, oy + cfg.crop), slice(ox, ox + cfg.crop))
                cur, his, y = cur[win], his[win], y[win]
            aug = torch.randint(0, 4, (len(idx),), generator=gen).tolist()
            cur = torch.stack([flip_augment(c, a) for c, a in zip(cur, aug)])
            his = torch.stack([flip_augment(c, a) for c, a in zip(his, aug)])
            y = torch.stack([flip_augment(c, a) for c, a in zip(y, aug)])
            if cfg.synthetic > 0:
                synthesize(cur, his, y, gen, cfg.synthetic)
            if cfg.photometric:
                cur, his = photometric(cur, gen), photometric(his, gen)
            if cfg.channels_last:
                cur, his = cur.contiguous(memory_format=torch.channels_last), his.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda" if cfg.device.startswith("cuda") else "cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                logits = model.forward_logits(cur, his)  # type: ignore[operator]  # every paired model defines it
            loss = F.binary_cross_entropy_with_logits(logits.float(), y)
            if cfg.loss == "bce+dice":
                loss = loss + _dice_loss(logits.float(), y)
            elif cfg.loss != "bce":
                raise ValueError(f"unknown loss {cfg.loss!r}: bce | bce+dice")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        rec: dict[str, Any] = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan"),
                               "seconds": time.perf_counter() - t_start, "steps": len(losses)}
        if val is not None and len(val):
            m = evaluate_arrays(model, val, cfg.device)
            rec.update(_val_record(m))
            score = _val_score(m)
        else:
            score = (-rec["loss"], 0.0)
        history.append(rec)
        if on_epoch:
            on_epoch(rec)
        if score > best[0]:
            best = (score, epoch + 1, _snapshot(model), rec)
        if checkpoint:
            state = {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
                "torch_rng": torch.get_rng_state(), "history": history, "best_score": list(best[0]),
                "best_epoch": best[1], "best_state": best[2], "best_val": best[3], "epoch": epoch + 1,
                "elapsed": time.perf_counter() - t_start,
            }
            torch.save(state, checkpoint + ".tmp")
            os.replace(checkpoint + ".tmp", checkpoint)  # a crash mid-write never leaves a torn checkpoint
        if time.perf_counter() - t_start > cfg.max_seconds:
            break
    model.load_state_dict(best[2])
    threshold = 0.5
    if val is not None and len(val) and val.mask.any():
        # move off the paper's 0.5 only for a clear validation gain, and not far: small validation splits are noisy
        pm = pixel_metrics(model, val, cfg.device)
        cand, _ = pm.best_f1_threshold()
        cand = float(min(max(cand, 0.25), 0.75))
        if pixel_metrics(model, val, cfg.device, threshold=cand).compute()["f1"] > pm.compute()["f1"] + 0.02:
            threshold = cand  # judged where the threshold lands after clamping (as anodet_core.scoring.calibration)
    return TrainResult(best[2], best[1], best[3], history, time.perf_counter() - t_start, threshold)
