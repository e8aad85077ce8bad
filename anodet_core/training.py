"""Supervised training of paired models (AnoDFDNet and baselines) from labelled pairs.

Protocol (AnoDFDNet paper): BCE on the sigmoid map (computed from logits, which is the same loss without
the log(0) hazard), Adam lr 2e-4 betas (0.5, 0.999), batch 4, one augmentation per sample drawn from
{identity, vertical flip, horizontal flip, 180° rotation} applied jointly to cur, his and mask, 256x256.
Beyond the paper (switchable): independent photometric jitter of cur and his (gain, gamma), because nightly
illumination changes are nuisance the model must learn to ignore.

The best checkpoint is the one with the best validation F1 (micro, pixels, threshold 0.5).
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .imaging import read_mask, resize
from .inference import to_input
from .layout import Store
from .metrics import PixelMetrics
from .preprocess import MODEL_SIZE, prepare_pair


@dataclass
class LabelledPair:
    """One supervised sample: where cur, his and the mask live (store-relative or absolute paths)."""

    key: str  # capture id or pair folder name
    cur_uri: str
    his_uri: str
    mask_uri: str | None  # None: normal (all-zero mask)
    group: str = ""  # e.g. the night: used for held-out splits


@dataclass
class PairArrays:
    """Prepared samples in memory: uint8 NHWC images and uint8 {0,1} masks at model size."""

    keys: list[str]
    cur: np.ndarray
    his: np.ndarray
    mask: np.ndarray
    groups: list[str] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # native (width, height) of each cur

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, idx: Sequence[int]) -> PairArrays:
        idx = list(idx)
        return PairArrays([self.keys[i] for i in idx], self.cur[idx], self.his[idx], self.mask[idx],
                          [self.groups[i] for i in idx] if self.groups else [],
                          [self.sizes[i] for i in idx] if self.sizes else [])

    def fingerprint(self) -> str:
        """Content hash of the samples: tells whether two models saw the same data."""
        h = hashlib.sha256()
        for a in (self.cur, self.his, self.mask):
            h.update(a.tobytes())
        return h.hexdigest()[:16]


def mask_to_model(mask: np.ndarray, size: int = MODEL_SIZE) -> np.ndarray:
    """Native bool mask -> model-size {0,1}: a model pixel is anomalous when >= 1/4 of it is (keeps thin scratches)."""
    cover = resize((mask.astype(np.uint8) * 255), (size, size), resample=4)  # Image.Resampling.BOX = 4
    return (cover >= 64).astype(np.uint8)


def prepare_arrays(
    read: Callable[[str], bytes],
    pairs: Sequence[LabelledPair],
    *,
    registration: str = "auto",
    progress: bool = False,
) -> PairArrays:
    """Decode, register and resize every pair exactly as the nightly run does."""
    from tqdm import tqdm

    n = len(pairs)
    cur = np.zeros((n, MODEL_SIZE, MODEL_SIZE, 3), np.uint8)
    his = np.zeros_like(cur)
    mask = np.zeros((n, MODEL_SIZE, MODEL_SIZE), np.uint8)
    sizes: list[tuple[int, int]] = []
    for i, p in enumerate(tqdm(pairs, desc="preparing pairs", disable=not progress)):
        prep = prepare_pair(read(p.cur_uri), read(p.his_uri), registration=registration)
        cur[i], his[i] = prep.cur, prep.his
        sizes.append(prep.native_size)
        if p.mask_uri:
            mask[i] = mask_to_model(read_mask(read(p.mask_uri), prep.native_size))
    return PairArrays([p.key for p in pairs], cur, his, mask, [p.group for p in pairs], sizes)


def store_pairs(store: Store, depot: str, nights: Sequence[str]) -> list[LabelledPair]:
    """Labelled captures of the given nights paired with the history production would use.

    History: the most recent earlier capture of the same region labelled normal, else the pinned reference.
    Captures without a label row or without any history are skipped.
    """
    pairs: list[LabelledPair] = []
    last_normal: dict[tuple, str] = {}
    for night in sorted(nights):
        labels = store.read_labels(depot, night)
        if labels.empty:
            continue
        manifest = store.read_manifest(depot, night).sort_values("captured_at")
        lab = labels.set_index("capture_id")
        normal_tonight: dict[tuple, str] = {}
        for row in manifest.itertuples():
            if row.capture_id not in lab.index:
                continue
            key = (row.train_id, int(row.car), row.region_id)
            his = last_normal.get(key)
            if his is None:
                ref = store.reference_rel(row.train_id, int(row.car), row.region_id)
                his = ref if store.exists(ref) else None
            label = lab.loc[row.capture_id]
            if his is not None:
                pairs.append(LabelledPair(row.capture_id, row.uri, his, label["mask_uri"] if label["anomalous"] else None, night))
            if not label["anomalous"]:
                normal_tonight[key] = row.uri
        last_normal.update(normal_tonight)
    return pairs


def folder_pairs(root: str) -> list[LabelledPair]:
    """A paired-folder dataset: ``root/<pair>/cur.*, his.*[, mask.*]`` (white mask = anomaly)."""
    import glob

    pairs = []
    for d in sorted(glob.glob(os.path.join(root, "*", ""))):
        def one(stem: str) -> str | None:
            found = sorted(glob.glob(os.path.join(d, stem + ".*")))  # noqa: B023  (called in this iteration)
            return found[0] if found else None

        cur, his = one("cur"), one("his")
        if cur and his:
            pairs.append(LabelledPair(os.path.basename(d.rstrip("/")), cur, his, one("mask"), os.path.basename(root.rstrip("/"))))
    return pairs


# ------------------------------------------------------------------------------------------ training

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


def _photometric(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
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


def _synthesize(cur: torch.Tensor, his: torch.Tensor, y: torch.Tensor, gen: torch.Generator, p: float) -> None:
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


def _dice_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Soft Dice over the batch: gives the rare anomaly pixels the weight plain BCE denies them."""
    p = torch.sigmoid(logits)
    inter = (p * y).sum()
    return 1 - (2 * inter + 1) / (p.sum() + y.sum() + 1)


@dataclass
class TrainConfig:
    epochs: int = 20
    max_seconds: float = math.inf
    batch_size: int = 4
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    seed: int = 0
    photometric: bool = True
    loss: str = "bce+dice"  # "bce": the paper's loss; "bce+dice" adds soft Dice for tiny anomalies
    synthetic: float = 0.5  # probability per sample of a pasted synthetic change (0: the paper's protocol)
    device: str = "cpu"
    bf16: bool = False  # autocast bf16 for the forward/backward (CPU with AVX-512 BF16, or GPU)
    max_steps: int = 0  # optimiser steps in all (0: no limit but the epochs); bounds fine-tuning and pretraining
    crop: int = 0  # train on random crop x crop windows of each batch (0: whole 256x256 pairs); multiple of 16
    lr_schedule: str = "constant"  # "constant" | "cosine" (over max_steps, else over all epochs' steps)
    channels_last: bool = False  # channels_last memory format in training (faster with bf16 on CPU)


@dataclass
class TrainResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val: dict[str, float]
    history: list[dict[str, Any]]
    seconds: float
    threshold: float = 0.5  # operating threshold: best validation F1 (0.5 without validation data)


@torch.inference_mode()
def pixel_metrics(model: torch.nn.Module, data: PairArrays, device: str = "cpu", batch_size: int = 16, threshold: float = 0.5) -> PixelMetrics:
    """Accumulated pixel metrics (see anodet_core.metrics) of a model on prepared pairs at model resolution."""
    model.eval()
    pm = PixelMetrics(threshold=threshold)
    for s in range(0, len(data), batch_size):
        sl = slice(s, s + batch_size)
        out = model(to_input(data.cur[sl], device, False), to_input(data.his[sl], device, False))[:, 0]
        pm.update(out.float().cpu().numpy(), data.mask[sl])
    return pm


def evaluate_arrays(model: torch.nn.Module, data: PairArrays, device: str = "cpu", batch_size: int = 16, threshold: float = 0.5) -> dict[str, float]:
    """Pixel metrics at ``threshold`` (the paper's 0.5 by default), plus AUC and EER."""
    return pixel_metrics(model, data, device, batch_size, threshold).compute()


def train_pairs(
    model: torch.nn.Module,
    train: PairArrays,
    val: PairArrays | None,
    cfg: TrainConfig,
    *,
    progress: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    checkpoint: str | None = None,
) -> TrainResult:
    """Train with the paper's protocol; validate every epoch and keep the best-F1 weights.

    With ``checkpoint`` (a local file) the state after every epoch is saved there, and a later call with the
    same file resumes after the last finished epoch: same weights, optimiser, random streams and history, so
    an interrupted run ends where an uninterrupted one would. The wall-time limit counts both sessions.
    """
    from tqdm import tqdm

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
        bar = tqdm(range(0, n, cfg.batch_size), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
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
                _synthesize(cur, his, y, gen, cfg.synthetic)
            if cfg.photometric:
                cur, his = _photometric(cur, gen), _photometric(his, gen)
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
            rec.update({f"val_{k}": v for k, v in m.items() if k in ("precision", "recall", "f1", "iou", "auc")})
            # best F1; AUC breaks ties (early on every epoch can have F1 = 0 while ranking already improves)
            score = (m["f1"], m["auc"] if m["auc"] == m["auc"] else -1.0)
        else:
            score = (-rec["loss"], 0.0)
        history.append(rec)
        if on_epoch:
            on_epoch(rec)
        if score > best[0]:
            best = (score, epoch + 1, copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()}), rec)
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
            threshold = cand  # judged where the threshold lands after clamping (as anodet_core.calibration)
    return TrainResult(best[2], best[1], best[3], history, time.perf_counter() - t_start, threshold)


def split_indices(n: int, val_frac: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded 8:2 (by default) split of n samples."""
    perm = np.random.default_rng(seed).permutation(n).tolist()
    k = int(round(n * val_frac))
    return sorted(perm[k:]), sorted(perm[:k])


# ------------------------------------------------------------------------------------------ candidates


@dataclass
class Candidate:
    model: torch.nn.Module
    card: Any  # model_store.ModelCard (not yet saved: version empty)
    result: TrainResult
    test: PairArrays | None


def train_candidate(
    store: Store,
    depot: str,
    train_nights: Sequence[str],
    test_nights: Sequence[str],
    *,
    name: str = "anodfdnet",
    arch: str = "anodfdnet",
    preset: str | None = "lite",
    overrides: dict[str, Any] | None = None,
    cfg: TrainConfig | None = None,
    registration: str = "auto",
    progress: bool = False,
    init: str | None = None,
) -> Candidate:
    """Train a model on the labelled pairs of ``train_nights`` (8:2 train/validation split, best val F1) and
    measure it on ``test_nights``; returns an unsaved candidate whose card carries the test metrics.

    ``init`` (a model reference, e.g. ``anodfdnet:base``, the shipped pretrained model) fine-tunes that model
    instead of training ``arch``/``preset`` from scratch: its architecture, preset and config are kept. The
    operating point (threshold, minimum finding area) is calibrated on the validation split either way.
    """
    from .calibration import calibrate
    from .model_store import ModelCard, load
    from .models import create_model

    cfg = cfg or TrainConfig()
    pairs = store_pairs(store, depot, train_nights)
    if len(pairs) < 2:
        raise ValueError(f"need at least 2 labelled pairs in {depot} nights {list(train_nights)}, found {len(pairs)}")
    data = prepare_arrays(store.read_bytes, pairs, registration=registration, progress=progress)
    tr, va = split_indices(len(data), 0.2, cfg.seed)
    init_card = None
    if init:
        model, init_card = load(store, init, "cpu")
        arch, preset, overrides = init_card.arch, init_card.preset, dict(init_card.config)
    else:
        model = create_model(arch, preset=preset, **(overrides or {}))
    val = data.subset(va)
    result = train_pairs(model, data.subset(tr), val, cfg, progress=progress)
    cal = calibrate(model, val, cfg.device) if len(val) else None
    threshold = cal.threshold if cal else result.threshold
    test = None
    metrics: dict[str, Any] = {}
    split = ""
    test_pairs = store_pairs(store, depot, test_nights) if test_nights else []
    if test_pairs:
        test = prepare_arrays(store.read_bytes, test_pairs, registration=registration, progress=progress)
        metrics = evaluate_arrays(model, test, cfg.device)
        at_op = evaluate_arrays(model, test, cfg.device, threshold=threshold)
        metrics.update({f"{k}_at_threshold": at_op[k] for k in ("precision", "recall", "f1", "iou")})
        split = f"{depot}:{','.join(sorted(test_nights))}"
    card = ModelCard(
        name=name,
        arch=arch,
        preset=preset,
        config=dict(overrides or {}),
        metrics=metrics,
        threshold=threshold,
        min_finding_area=cal.min_finding_area if cal else None,
        eval_split=split,
        data_fingerprint=data.fingerprint(),
        extra={
            "train_nights": sorted(train_nights),
            "n_train": len(tr),
            "n_val": len(va),
            "n_test": len(test_pairs),
            "best_epoch": result.best_epoch,
            "best_val": result.best_val,
            "train_seconds": round(result.seconds, 1),
            "steps": sum(int(h.get("steps", 0)) for h in result.history),
            "train_config": {k: v for k, v in cfg.__dict__.items() if k != "max_seconds" or math.isfinite(v)},
            "init": None if init_card is None else {"ref": init, "version": init_card.version,
                                                     "data_fingerprint": init_card.data_fingerprint},
            "calibration": None if cal is None else cal.__dict__,
        },
    )
    return Candidate(model, card, result, test)
