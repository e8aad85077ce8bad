"""Single-image unsupervised models (CSA-Flow, AnoViT): folders in, trained and calibrated model cards out.

Unlike the paired models (current vs historical capture, trained on labelled changes), these models see one
image and are trained on NORMAL images only; an image is anomalous when it is unlikely (CSA-Flow: flow
negative log-likelihood of its features) or badly reconstructed (AnoViT).  This module holds everything the
``anodet train --model ...`` and ``anodet evaluate --normal-dir ...`` commands need:

* :func:`load_images` / :func:`load_masks`: a folder of images (sorted by name) resized to the model input.
* :func:`train_single_image`: maximum-likelihood / reconstruction training on normal images, random flips as
  augmentation, seeded, with a wall-time limit; only trainable parameters are optimised (CSA-Flow's backbone
  is frozen).  CSA-Flow uses its paper optimiser (``csaflow.make_optimizer``: Adam lr 2e-4, weight decay
  1e-5, betas (0.5, 0.9), eps 1e-4) and gradient-norm clipping at 1; AnoViT uses Adam lr 1e-4 (the AnoViT
  file specifies no optimiser; 1e-4 is the usual ViT auto-encoder setting).
* :func:`score_images`: image scores and pixel maps in the model's OWN units (CSA-Flow: mean z^2/2,
  AnoViT: smoothed squared error).  They are not probabilities and not in [0, 1].
* :func:`fit_single_image`: seeded 80/20 split of the normal images, training on the 80 %, and the
  **threshold rule**: the image-score threshold is the 99th percentile (numpy linear interpolation) of the
  scores of the held-out 20 % of normal images, so by construction about 1 % of normal images raise an
  alarm (with fewer than ~100 held-out images this is close to their maximum).  The held-out normal score
  statistics (image scores: mean, std, quantiles; pixel maps: mean, std, 99th / 99.9th percentiles) go to
  ``card.extra`` so later consumers (the night) can normalise scores, e.g. ``(s - mean) / std`` or
  ``map / map_p999``.
* :func:`evaluate_single_image`: image AUROC (exact rank AUC), recall at the card's threshold, false alarms,
  and pixel AUROC.  Pixel AUROC is the exact rank AUC (:func:`anodet_core.metrics.roc_auc`, ties 1/2) over
  every pixel of the anomalous images (labels from their masks) and of the normal images (all labelled
  normal); maps are in score units, so the [0, 1]-histogram ``PixelMetrics`` is not used.  Above
  ``max_pixels`` (default 4M) a seeded uniform random subsample of that many pixels is ranked instead
  (standard error of the AUC well below 1e-3 at that size).
* :func:`save_single_image_model`: a model-store version whose card rebuilds the model through
  ``create_model(arch, preset=preset, **overrides)``; promoted to ``production`` when the name has none.

Nightly use (captures without history): the single-image model of a region type is registered as
``<arch>-<region_id>`` (:func:`single_image_model_name`), trained by the retraining flow on that region's
normal-labelled captures (:func:`retrain_region_model`).  The night scores a capture with
:class:`SingleImageScorer`: :func:`prepare_image` (reduced decode + resize), one forward pass for the image
score and the map, and :func:`normalise_map`: ``clip(map / (2 * normal_map_p999), 0, 1)`` so the held-out
normal pixel p99.9 lands at 0.5 (:data:`MAP_THRESHOLD`, where findings are cut).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .imaging import ImageError, read_mask
from .preprocess import prepare_image
from .training import flip_augment

if TYPE_CHECKING:
    from .models.csaflow import CSAFlow

__all__ = [
    "ARCHS",
    "IMAGE_SUFFIXES",
    "THRESHOLD_QUANTILE",
    "VAL_FRAC",
    "ANOVIT_LR",
    "config_input_size",
    "model_input_size",
    "list_images",
    "load_images",
    "load_masks",
    "to_input",
    "train_single_image",
    "score_images",
    "calibrate",
    "SingleImageFit",
    "fit_single_image",
    "evaluate_single_image",
    "save_single_image_model",
    "MAP_THRESHOLD",
    "MIN_NORMAL",
    "single_image_model_name",
    "prepare_image",
    "map_scale",
    "normalise_map",
    "SingleImageScorer",
    "labelled_captures",
    "single_image_regions",
    "RegionRetrain",
    "retrain_region_model",
]

ARCHS: tuple[str, ...] = ("csaflow", "anovit")
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
THRESHOLD_QUANTILE: float = 0.99
"""Image-score threshold = this quantile of the held-out normal images' scores."""
VAL_FRAC: float = 0.2
"""Share of the normal images held out (seeded) to calibrate the threshold."""
ANOVIT_LR: float = 1e-4
MAX_PIXELS: int = 4_000_000
"""Pixel AUROC ranks at most this many pixels (seeded uniform subsample above)."""
_CACHE_BYTES: int = 1 << 30  # CSA-Flow training caches frozen-backbone features up to this size


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unknown single-image model {arch!r}; choose one of {list(ARCHS)}")


def _config(arch: str, preset: str | None, overrides: dict[str, Any] | None) -> Any:
    """The dataclass config ``create_model(arch, preset, **overrides)`` would use (validated, nothing built)."""
    _check_arch(arch)
    presets: dict[str, Any]
    cls: type
    if arch == "csaflow":
        from .models import csaflow

        presets, cls, label = csaflow.PRESETS, csaflow.CSAFlowConfig, "CSA-Flow"
    else:
        from .models import anovit

        presets, cls, label = anovit.PRESETS, anovit.AnoViTConfig, "AnoViT"
    name = preset or "paper"
    if name not in presets:
        raise ValueError(f"unknown {label} preset {name!r}; valid presets: {sorted(presets)}")
    fields = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(overrides or {}) - fields)
    if bad:
        raise ValueError(f"unknown {label} config fields {bad}; valid fields: {sorted(fields)}")
    return dataclasses.replace(presets[name], **(overrides or {}))


def config_input_size(arch: str, preset: str | None = "lite", overrides: dict[str, Any] | None = None) -> int:
    """Square input side of the model: CSA-Flow ``input_size``, AnoViT ``img_size``."""
    cfg = _config(arch, preset, overrides)
    return int(cfg.input_size if arch == "csaflow" else cfg.img_size)


def _arch_of(model: torch.nn.Module) -> str:
    from .models.anovit import AnoViT
    from .models.csaflow import CSAFlow

    if isinstance(model, CSAFlow):
        return "csaflow"
    if isinstance(model, AnoViT):
        return "anovit"
    raise ValueError(f"not a single-image model: {type(model).__name__}")


def model_input_size(model: torch.nn.Module) -> int:
    """Square input side a built single-image model was configured for."""
    cfg: Any = model.cfg  # CSAFlowConfig or AnoViTConfig
    return int(cfg.input_size if _arch_of(model) == "csaflow" else cfg.img_size)


def _mean_std(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if _arch_of(model) == "csaflow":
        from .models.csaflow import MEAN, STD
    else:
        from .models.anovit import MEAN, STD
    return MEAN, STD


# ------------------------------------------------------------------------------------------ folders


def list_images(folder: str) -> list[str]:
    """Image file names (jpg/png/bmp/tif, any case) directly in ``folder``, sorted."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder {folder!r} does not exist or is not a folder")
    return sorted(
        f for f in os.listdir(folder)
        if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".") and os.path.isfile(os.path.join(folder, f))
    )


def load_images(folder: str, size: int) -> tuple[np.ndarray, list[str]]:
    """Every image of ``folder`` (sorted by name) as RGB, resized to ``size`` x ``size``.

    Returns (uint8 array (N, size, size, 3), file names).  An empty folder or an undecodable file is a
    ``ValueError`` naming it.
    """
    names = list_images(folder)
    if not names:
        raise ValueError(f"no images ({'/'.join(s[1:] for s in IMAGE_SUFFIXES)}) in {folder!r}")
    out = np.empty((len(names), size, size, 3), np.uint8)
    for i, name in enumerate(names):
        with open(os.path.join(folder, name), "rb") as fh:
            data = fh.read()
        try:
            out[i], _ = prepare_image(data, size)
        except ImageError as exc:
            raise ValueError(f"{os.path.join(folder, name)}: {exc}") from exc
    return out, names


def load_masks(mask_dir: str, names: Sequence[str], size: int) -> np.ndarray:
    """Masks (white = anomaly) for the images ``names``, matched by file stem: ``<mask_dir>/<stem>.*``.

    Returns bool (N, size, size) (nearest-neighbour resize).  A missing mask is a ``ValueError`` listing the
    stems, so pixel metrics are never computed on silently incomplete labels.
    """
    by_stem: dict[str, str] = {}
    for f in list_images(mask_dir):
        by_stem.setdefault(os.path.splitext(f)[0], f)
    missing = [n for n in names if os.path.splitext(n)[0] not in by_stem]
    if missing:
        raise ValueError(f"no mask in {mask_dir!r} for {len(missing)} image(s): {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''} (masks are matched by file stem)")
    out = np.empty((len(names), size, size), bool)
    for i, n in enumerate(names):
        with open(os.path.join(mask_dir, by_stem[os.path.splitext(n)[0]]), "rb") as fh:
            out[i] = read_mask(fh.read(), (size, size))
    return out


def to_input(images: np.ndarray, model: torch.nn.Module, device: str = "cpu") -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) normalised with the model's MEAN/STD, on ``device``."""
    mean, std = _mean_std(model)
    images = np.ascontiguousarray(images)
    if not images.flags.writeable:  # decoded images can be read-only views; torch wants writable memory
        images = images.copy()
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return (x - m) / s


# ------------------------------------------------------------------------------------------ training


class _FeatureCache:
    """CSA-Flow's backbone is frozen and in eval mode, so its features of (image, flip) never change: compute
    them once and reuse them in later epochs (exact, not an approximation), up to a memory budget."""

    def __init__(self, model: CSAFlow, budget: int = _CACHE_BYTES) -> None:
        self.model = model
        self.budget = budget
        self.used = 0
        self.store: dict[tuple[int, int], list[torch.Tensor]] = {}

    def features(self, x: torch.Tensor, keys: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        fresh: dict[int, list[torch.Tensor]] = {}
        if missing:
            feats = self.model.backbone_features(x[missing])
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

    from .models import create_model

    _check_arch(arch)
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
    model: Any = create_model(arch, preset=preset, **overrides).to(device)  # CSAFlow or AnoViT, by arch
    params = [p for p in model.parameters() if p.requires_grad]
    clip: float | None
    if arch == "csaflow":
        from .models import csaflow as csa

        opt = csa.make_optimizer(model)
        if lr is not None:
            for g in opt.param_groups:
                g["lr"] = lr
        clip = csa.GRAD_CLIP_NORM
        cache: _FeatureCache | None = _FeatureCache(model)
    else:
        opt = torch.optim.Adam(params, lr=ANOVIT_LR if lr is None else lr)
        clip, cache = None, None
    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    out_of_time = False
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=gen).tolist()
        flips = torch.randint(0, 4, (n,), generator=gen).tolist()
        losses: list[float] = []
        bar = tqdm(range(0, n, batch_size), desc=f"{arch} epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for s in bar:
            idx = order[s : s + batch_size]
            x = to_input(normal[idx], model, device)
            x = torch.stack([flip_augment(xi, flips[i]) for xi, i in zip(x, idx)])
            opt.zero_grad(set_to_none=True)
            if cache is not None:
                feats = cache.features(x, [(i, flips[i]) for i in idx])
                loss = model.loss_from(*model.flow(model.attend(feats)))
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
    return model.eval(), history


# ------------------------------------------------------------------------------------------ scoring


@torch.no_grad()
def score_images(
    model: Any, images: np.ndarray, device: str = "cpu", batch: int = 8, *, maps: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """(image scores float64 (N,), anomaly maps float32 (N, H, W) or None when ``maps=False``).

    ``images``: uint8 (N, H, W, 3) at the model's input size.  Scores are ``model.image_score`` and maps
    ``model.anomaly_map``, in the model's own units (not [0, 1], not probabilities); both come from one
    forward pass per batch.
    """
    arch = _arch_of(model)
    model.eval()
    n = len(images)
    scores = np.empty(n, np.float64)
    out = np.empty((n, *images.shape[1:3]), np.float32) if maps else None
    for s in range(0, n, max(1, batch)):
        x = to_input(images[s : s + batch], model, device)
        if arch == "csaflow":
            zs, _ = model(x)
            sc = model.score_from(zs)
            mp = model.map_from(zs, (x.shape[-2], x.shape[-1])) if maps else None
        else:  # AnoViT: image_score is the max of anomaly_map
            mp = model.anomaly_map(x)
            sc = mp.amax(dim=(1, 2, 3))
        scores[s : s + len(x)] = sc.double().cpu().numpy()
        if out is not None and mp is not None:  # mp is None only without maps
            out[s : s + len(x)] = mp[:, 0].float().cpu().numpy()
    return scores, out


def calibrate(scores: np.ndarray, maps: np.ndarray | None = None, quantile: float = THRESHOLD_QUANTILE) -> tuple[float, dict[str, Any]]:
    """(threshold, statistics) from the scores (and maps) of held-out NORMAL images.

    threshold = ``np.quantile(scores, quantile)`` (linear interpolation); statistics: image-score mean, std,
    min, max, median, p95, p99 and, with maps, pixel mean, std, p99 and p999 (for normalising maps later).
    """
    s = np.asarray(scores, np.float64)
    if s.size == 0 or not np.isfinite(s).all():
        raise ValueError("calibration needs at least one finite normal score")
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    thr = float(np.quantile(s, quantile))
    stats: dict[str, Any] = {
        "normal_score_mean": float(s.mean()), "normal_score_std": float(s.std()),
        "normal_score_min": float(s.min()), "normal_score_max": float(s.max()),
        "normal_score_median": float(np.median(s)), "normal_score_p95": float(np.quantile(s, 0.95)),
        "normal_score_p99": float(np.quantile(s, 0.99)), "n_calibration": int(s.size),
    }
    if maps is not None:
        m = np.asarray(maps, np.float64).ravel()
        if m.size > MAX_PIXELS:
            m = np.random.default_rng(0).choice(m, MAX_PIXELS, replace=False)
        stats.update({
            "normal_map_mean": float(m.mean()), "normal_map_std": float(m.std()),
            "normal_map_p99": float(np.quantile(m, 0.99)), "normal_map_p999": float(np.quantile(m, 0.999)),
        })
    return thr, stats


@dataclass
class SingleImageFit:
    """Result of :func:`fit_single_image`: a trained, calibrated model ready for :func:`save_single_image_model`."""

    model: torch.nn.Module
    arch: str
    preset: str | None
    overrides: dict[str, Any]
    threshold: float
    history: list[dict[str, Any]]
    seconds: float
    n_train: int
    n_val: int
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str = ""


def _split(n: int, val_frac: float, seed: int) -> tuple[list[int], list[int]]:
    if n < 2:
        raise ValueError(f"need at least 2 normal images (one is held out to calibrate the threshold), got {n}")
    k = min(n - 1, max(1, int(round(n * val_frac))))
    perm = np.random.default_rng(seed).permutation(n).tolist()
    return sorted(perm[k:]), sorted(perm[:k])


def fit_single_image(
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
    val_frac: float = VAL_FRAC,
    quantile: float = THRESHOLD_QUANTILE,
    progress: bool = False,
) -> SingleImageFit:
    """Seeded (1 - val_frac) / val_frac split of the normal images, :func:`train_single_image` on the first
    part, threshold and normal-score statistics from the held-out part (:func:`calibrate`)."""
    overrides = dict(overrides or {})
    normal = np.asarray(normal)
    tr, va = _split(len(normal), val_frac, seed)
    t0 = time.perf_counter()
    model, history = train_single_image(arch, normal[tr], preset=preset, overrides=overrides, epochs=epochs,
                                        max_seconds=max_seconds, batch_size=batch_size, lr=lr, seed=seed,
                                        device=device, progress=progress)
    seconds = time.perf_counter() - t0
    scores, maps = score_images(model, normal[va], device, batch_size)
    thr, stats = calibrate(scores, maps, quantile)
    fpr = float(np.mean(scores > thr))
    size = normal.shape[1]
    extra = {
        "kind": "single_image",
        "input_size": int(size),
        "mean": list(_mean_std(model)[0]),
        "std": list(_mean_std(model)[1]),
        "score_units": "CSA-Flow: mean z^2/2 (maps: channel-mean z^2)" if arch == "csaflow"
        else "AnoViT: max of the smoothed squared reconstruction error (maps: that error)",
        "threshold_rule": f"quantile {quantile} (numpy linear) of the image scores of {len(va)} held-out normal "
                          f"images (seeded {1 - val_frac:.0%}/{val_frac:.0%} split, seed {seed})",
        "threshold_quantile": quantile,
        **stats,
        "n_train": len(tr),
        "n_val": len(va),
        "epochs_run": len(history),
        "train_seconds": round(seconds, 3),
        "final_loss": history[-1]["loss"] if history else float("nan"),
        "seed": seed,
    }
    metrics = {"val_false_alarm_rate": fpr, "val_score_mean": stats["normal_score_mean"],
               "val_score_std": stats["normal_score_std"]}
    fingerprint = hashlib.sha256(np.ascontiguousarray(normal).tobytes()).hexdigest()[:16]
    return SingleImageFit(model, arch, preset, overrides, thr, history, seconds, len(tr), len(va), metrics, extra,
                          fingerprint)


# ------------------------------------------------------------------------------------------ evaluation


def _pixel_auroc(maps: np.ndarray, labels: np.ndarray, max_pixels: int, seed: int) -> float:
    from .metrics import roc_auc

    s = maps.reshape(-1)
    y = labels.reshape(-1)
    if s.size > max_pixels:
        idx = np.random.default_rng(seed).choice(s.size, max_pixels, replace=False)
        s, y = s[idx], y[idx]
    return roc_auc(s, y)


def evaluate_single_image(
    model: torch.nn.Module,
    card: Any,
    normal: np.ndarray,
    anomalous: np.ndarray,
    masks: np.ndarray | None = None,
    *,
    device: str = "cpu",
    batch_size: int = 8,
    max_pixels: int = MAX_PIXELS,
    seed: int = 0,
) -> dict[str, Any]:
    """Image and pixel metrics of a single-image model on normal vs anomalous images (uint8 NHWC).

    * ``image_auroc``: exact rank AUC of the image scores (anomalous = positive); NaN with one class.
    * ``recall``: share of anomalous images with score > ``card.threshold``; ``false_alarms``: normal
      images above it (``false_alarm_rate`` = false_alarms / n_normal).
    * ``pixel_auroc``: with ``masks`` (bool (n_anomalous, H, W), the anomalous images' labels), exact rank
      AUC over all pixels of the anomalous and normal images (normal images: every pixel normal), on a
      seeded subsample of ``max_pixels`` pixels when there are more; NaN without masks or when the masks
      hold no anomalous pixel.
    """
    from .metrics import image_metrics

    normal = np.asarray(normal)
    anomalous = np.asarray(anomalous)
    if masks is not None and (len(masks) != len(anomalous) or masks.shape[1:] != anomalous.shape[1:3]):
        raise ValueError(f"masks {masks.shape} do not match the anomalous images {anomalous.shape}")
    want_maps = masks is not None
    s_norm, m_norm = score_images(model, normal, device, batch_size, maps=want_maps) if len(normal) else (np.empty(0), None)
    s_anom, m_anom = score_images(model, anomalous, device, batch_size, maps=want_maps) if len(anomalous) else (np.empty(0), None)
    thr = float(card.threshold)
    scores = np.concatenate([s_norm, s_anom])
    labels = np.r_[np.zeros(len(s_norm), bool), np.ones(len(s_anom), bool)]
    im = image_metrics(scores, labels, scores > thr)
    pixel = float("nan")
    if masks is not None and len(anomalous):  # masks is not None: want_maps
        maps = np.concatenate([m for m in (m_norm, m_anom) if m is not None])
        lab = np.concatenate([np.zeros((len(normal), *masks.shape[1:]), np.bool_), masks.astype(bool)])
        pixel = _pixel_auroc(maps, lab, max_pixels, seed)
    return {
        "image_auroc": im.image_auroc,
        "recall": im.recall,
        "pixel_auroc": pixel,
        "false_alarms": im.false_alarms,
        "false_alarm_rate": im.false_alarm_rate,
        "n_normal": im.n_normal,
        "n_anomalous": im.n_anomalous,
        "threshold": thr,
        "normal_scores": s_norm,
        "anomalous_scores": s_anom,
    }


# ------------------------------------------------------------------------------------------ registry


def save_single_image_model(
    store: Any,
    name: str,
    arch: str,
    preset: str | None,
    overrides: dict[str, Any] | None,
    model: torch.nn.Module,
    threshold: float,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    *,
    eval_split: str = "",
    data_fingerprint: str = "",
    promote: bool = False,
) -> Any:
    """Save a new version (weights + card with ``threshold`` and the normal-score statistics in ``extra``);
    it becomes ``production`` when ``promote`` or when ``name`` has no production version yet."""
    from . import model_store

    _check_arch(arch)
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    card = model_store.ModelCard(
        name=name, arch=arch, preset=preset, config=dict(overrides or {}), threshold=float(threshold),
        metrics=dict(metrics or {}), eval_split=eval_split, data_fingerprint=data_fingerprint,
        extra=dict(extra or {}),
    )
    card = model_store.save_version(store, model, card)
    if promote or model_store.get_alias(store, name) is None:
        model_store.set_alias(store, name, card.version)
    return card


# ------------------------------------------------------------------------------------------ nightly use

MAP_THRESHOLD: float = 0.5
"""Findings threshold of a normalised map (:func:`normalise_map`): the held-out normal pixel p99.9 lands here."""
MIN_NORMAL: int = 4
"""A region type gets a single-image model only with at least this many normal-labelled training captures."""


def single_image_model_name(arch: str, region_id: str) -> str:
    """Registry name of the single-image model of a region type: ``<arch>-<region_id>`` (e.g. ``csaflow-R01``)."""
    from .layout import check_name

    _check_arch(arch)
    return check_name(f"{arch}-{check_name(str(region_id), 'region_id')}", "model name")


def map_scale(card: Any) -> float:
    """Raw map value that becomes 1.0 after normalisation: twice the card's held-out normal pixel p99.9.

    So the normal p99.9 level maps to 0.5 (:data:`MAP_THRESHOLD`): about 1 normal pixel in 1000 reaches the
    finding threshold, before the minimum finding area removes isolated ones.  A card without a positive,
    finite ``normal_map_p999`` (in ``card.extra``) is a ``ValueError``.
    """
    p = (getattr(card, "extra", None) or {}).get("normal_map_p999")
    try:
        p = float(p)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        p = float("nan")
    if not (math.isfinite(p) and p > 0):
        raise ValueError(f"single-image model {getattr(card, 'name', '?')}:{getattr(card, 'version', '?')} has no "
                         "positive normal_map_p999 in its card; retrain it with fit_single_image")
    return 2.0 * p


def normalise_map(raw: np.ndarray, scale: float) -> np.ndarray:
    """Map in model units -> float32 in [0, 1]: ``clip(raw / scale, 0, 1)`` (``scale`` from :func:`map_scale`)."""
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"map scale must be positive and finite, got {scale}")
    out = np.atleast_1d(np.asarray(raw, np.float32) / np.float32(scale))
    np.clip(np.nan_to_num(out, copy=False, nan=1.0, posinf=1.0), 0.0, 1.0, out=out)
    return out.reshape(np.shape(raw))


class SingleImageScorer:
    """A loaded single-image model for the night: input size, image-score threshold and map scale from its card.

    Scores in fp32 (the card's threshold and map statistics were calibrated that way), through
    :func:`score_images`, i.e. the same forward pass as the calibration.
    """

    def __init__(self, model: torch.nn.Module, card: Any, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.card = card
        self.device = device
        self.size = model_input_size(self.model)
        self.threshold = float(card.threshold)
        self.scale = map_scale(card)

    def image_scores(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) -> image scores float64 (N,) in model units, no maps (second opinions)."""
        return score_images(self.model, images, self.device, batch=max(1, len(images)), maps=False)[0]

    def score(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, S, S, 3) at the input size -> (image scores float64 (N,) in model units,
        normalised maps float32 (N, S, S) in [0, 1])."""
        scores, maps = score_images(self.model, images, self.device, batch=max(1, len(images)))
        assert maps is not None
        return scores, normalise_map(maps, self.scale)


# ------------------------------------------------------------------------------------------ retraining


def labelled_captures(store: Any, depot: str, nights: Sequence[str]) -> Any:
    """Labelled captures of the depot's ``nights``: DataFrame ``capture_id, night, region_id, uri, anomalous``
    (captures without a label row, or with a null label, are left out)."""
    import pandas as pd

    cols = ["capture_id", "night", "region_id", "uri", "anomalous"]
    frames = []
    for night in sorted(nights):
        labels = store.read_labels(depot, night)
        if labels.empty:
            continue
        man = store.read_manifest(depot, night)
        lab = labels[["capture_id", "anomalous"]].dropna(subset=["anomalous"])
        m = man.drop(columns=["night"], errors="ignore").merge(lab, on="capture_id", how="inner")
        m["night"] = night
        frames.append(m[cols])
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=bool if c == "anomalous" else object) for c in cols})
    out = pd.concat(frames, ignore_index=True)
    out["anomalous"] = out["anomalous"].astype(bool)
    return out


def single_image_regions(captures: Any, min_normal: int = MIN_NORMAL) -> list[str]:
    """Region types with at least ``min_normal`` normal-labelled captures in ``captures``, sorted."""
    if captures.empty:
        return []
    counts = captures[~captures["anomalous"]].groupby("region_id").size()
    return sorted(str(r) for r, n in counts.items() if n >= min_normal)


def _read_images(store: Any, uris: Sequence[str], size: int) -> tuple[np.ndarray, int]:
    """Store images prepared like the night does (:func:`prepare_image`); (uint8 (N, size, size, 3), unreadable)."""
    out: list[np.ndarray] = []
    bad = 0
    for uri in uris:
        try:
            out.append(prepare_image(store.read_bytes(uri), size)[0])
        except (OSError, ImageError):  # FileNotFoundError is an OSError
            bad += 1
    return (np.stack(out) if out else np.empty((0, size, size, 3), np.uint8)), bad


@dataclass
class RegionRetrain:
    """Outcome of :func:`retrain_region_model` for one region type (JSON-friendly; ``row()`` for a table)."""

    region_id: str
    name: str
    candidate_version: str
    production_version: str | None  # before the decision
    promoted: bool
    reason: str
    metric: str
    candidate_value: float  # image AUROC on the held-out nights' labelled captures of the region (NaN: one class)
    production_value: float | None
    margin: float
    threshold: float
    n_train_normal: int
    n_test_normal: int
    n_test_anomalous: int
    n_unreadable: int
    epochs_run: int
    train_seconds: float
    eval_split: str

    def row(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None or not math.isfinite(v) else round(float(v), 4)

        return {
            "region": self.region_id, "model": f"{self.name}:{self.candidate_version}",
            "production_before": self.production_version or "", "promoted": self.promoted,
            "candidate_auroc": r(self.candidate_value), "production_auroc": r(self.production_value),
            "n_train_normal": self.n_train_normal, "n_test_normal": self.n_test_normal,
            "n_test_anomalous": self.n_test_anomalous, "reason": self.reason,
        }


def retrain_region_model(
    store: Any,
    depot: str,
    region_id: str,
    train: Any,
    test: Any,
    *,
    arch: str = "csaflow",
    preset: str | None = "lite",
    overrides: dict[str, Any] | None = None,
    epochs: int = 20,
    max_seconds: float = float("inf"),
    seed: int = 0,
    device: str = "cpu",
    margin: float = 0.01,
    min_normal: int = MIN_NORMAL,
) -> RegionRetrain:
    """Train, register and maybe promote the single-image model of one region type.

    ``train`` / ``test``: :func:`labelled_captures` of the training / held-out nights (all regions).  The
    candidate is :func:`fit_single_image` on the region's normal training captures (threshold and normal map
    statistics from its own held-out 20 %).  Promotion follows :func:`anodet_core.retraining.decide`: when
    ``<arch>-<region_id>`` has no production version, or when the candidate's image AUROC on the held-out
    nights' labelled captures of the region (both classes needed, else undefined and never a win) beats
    production's on the same captures by ``margin``.  The version is saved either way; the comparison goes to
    its card (``extra["promotion"]``).
    """
    from types import SimpleNamespace

    from . import model_store
    from .retraining import decide

    overrides = dict(overrides or {})
    name = single_image_model_name(arch, region_id)
    size = config_input_size(arch, preset, overrides)
    tr = train[(train["region_id"] == region_id) & ~train["anomalous"]]
    normal, bad = _read_images(store, tr["uri"].tolist(), size)
    if len(normal) < min_normal:
        raise ValueError(f"region {region_id!r} of {depot!r} has {len(normal)} readable normal training captures; "
                         f"need {min_normal}")
    fit = fit_single_image(arch, normal, preset=preset, overrides=overrides, epochs=epochs, max_seconds=max_seconds,
                           seed=seed, device=device)
    te = test[test["region_id"] == region_id]
    te_uris = (te.loc[~te["anomalous"], "uri"].tolist(), te.loc[te["anomalous"], "uri"].tolist())

    def held_out(sz: int) -> tuple[np.ndarray, np.ndarray, int]:
        (n, b1), (a, b2) = _read_images(store, te_uris[0], sz), _read_images(store, te_uris[1], sz)
        return n, a, b1 + b2

    te_norm, te_anom, bad_te = held_out(size)
    both = len(te_norm) > 0 and len(te_anom) > 0
    cand: dict[str, Any] | None = None
    if both:
        cand = evaluate_single_image(fit.model, SimpleNamespace(threshold=fit.threshold), te_norm, te_anom,
                                     device=device)
    cand_value = float(cand["image_auroc"]) if cand else float("nan")
    prod_version = model_store.get_alias(store, name)
    prod_value: float | None = None
    if prod_version is not None:
        prod_value = float("nan")
        if both:
            prod_model, prod_card = model_store.load(store, f"{name}:{prod_version}", device)
            psize = model_input_size(prod_model)
            pn, pa, _ = (te_norm, te_anom, 0) if psize == size else held_out(psize)
            prod_value = float(evaluate_single_image(prod_model, prod_card, pn, pa, device=device)["image_auroc"])
    promoted, reason = decide(cand_value, prod_value, margin)
    test_nights = sorted(set(te["night"])) if len(te) else []
    train_nights = sorted(set(tr["night"]))
    test_split = f"{depot}:{','.join(test_nights)} region {region_id} ({len(te_norm)} normal, {len(te_anom)} anomalous)"
    eval_split = (f"threshold: {fit.n_val} held-out normal captures of region {region_id} in "
                  f"{depot}:{','.join(train_nights)}; image metrics: {test_split}")
    metrics = dict(fit.metrics)
    if cand:
        metrics.update({k: cand[k] for k in ("image_auroc", "recall", "false_alarms", "false_alarm_rate",
                                             "n_normal", "n_anomalous")})
    extra = {**fit.extra, "depot": depot, "region_id": region_id, "train_nights": train_nights,
             "test_nights": test_nights}
    card = save_single_image_model(store, name, arch, preset, overrides, fit.model, fit.threshold, metrics, extra,
                                   eval_split=eval_split, data_fingerprint=fit.data_fingerprint, promote=promoted)
    result = RegionRetrain(
        region_id=str(region_id), name=name, candidate_version=card.version, production_version=prod_version,
        promoted=promoted, reason=reason, metric="image_auroc", candidate_value=cand_value,
        production_value=prod_value, margin=margin, threshold=fit.threshold, n_train_normal=len(normal),
        n_test_normal=len(te_norm), n_test_anomalous=len(te_anom), n_unreadable=bad + bad_te,
        epochs_run=len(fit.history), train_seconds=round(fit.seconds, 3), eval_split=test_split,
    )
    card.extra["promotion"] = {**dataclasses.asdict(result), "decided_at": _now()}
    model_store.update_card(store, card)
    return result


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
