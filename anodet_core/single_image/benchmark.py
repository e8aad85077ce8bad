"""The project's held-out single-image benchmark, and the comparison of every single-image model on it.

Made offline from real photographs and textures (scikit-image's bundled ones, :mod:`anodet_core.pretraining.sources`;
never Debian's ``opencv-doc`` images or the ``elpv-dataset`` package, which are kept for independent evaluation).
Each category is one photograph, the inspected surface: every image is a view of it as a robot would take it
night after night (a small seeded shift, rotation and scale, wider for the stationary textures, and mild
illumination, blur and sensor noise). Defective images carry one change drawn into the surface before it is viewed,
the pretraining corpus's own (:func:`anodet_core.pretraining.synth.draw_change`): a foreign object cut from another
photograph, a displaced part, a scratch or a stain, of many sizes; a change that does not show is redrawn. Train and
test images are different views (separate seeds); test defects use donor photographs of other categories.

Layout (MVTec AD's, which users know): ``DIR/<category>/train/good/*.png``, ``test/good/*.png``,
``test/defect/*.png`` and ``ground_truth/defect/<stem>.png`` (white = defect).

:func:`compare_single_image` fits every model on each category's ``train/good`` with the defaults of
``anodet train`` (:func:`fit_single_image`: 80 % train, the threshold from the other 20 %) and scores ``test``:
image AUROC, pixel AUROC, recall and false-alarm rate at the calibrated threshold, fit and scoring seconds.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = ["CATEGORIES", "TEXTURES", "make_benchmark", "SingleImageResult", "compare_single_image", "results_markdown",
           "results_json"]

TEXTURES = ("brick", "gravel", "grass")
CATEGORIES = (*TEXTURES, "coffee", "rocket", "clock")
_KINDS = ("foreign", "displaced", "scratch", "stain")
_MARGIN = 1.25  # the surface each view is cut from is this much larger than a view
_MIN_VISIBLE = 14.0  # mean |changed - before| (0-255) inside the footprint


def _square(photo: np.ndarray, side: int) -> np.ndarray:
    a = photo if photo.ndim == 3 else np.repeat(photo[..., None], 3, axis=2)
    h, w = a.shape[:2]
    s = min(h, w)
    a = a[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s, :3]
    return np.asarray(Image.fromarray(np.ascontiguousarray(a)).resize((side, side), Image.Resampling.BILINEAR),
                      np.float32)


def _view(world: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator, size: int, texture: bool
          ) -> tuple[np.ndarray, np.ndarray | None]:
    """A ``size`` view of ``world`` (and of its mask) from a jittered pose, with mild night-to-night nuisance."""
    side = world.shape[0]
    shift = (side - size) / 2 * (0.9 if texture else 0.2)
    rot = math.radians(rng.uniform(-2.0, 2.0))
    scale = 1 + rng.uniform(-0.03, 0.03)
    ty, tx = rng.uniform(-shift, shift, 2)
    c, s = math.cos(rot) / scale, math.sin(rot) / scale
    mat = np.array([[c, -s], [s, c]])
    centre_out = np.array([size / 2, size / 2])
    centre_in = np.array([side / 2 + ty, side / 2 + tx])
    offset = centre_in - mat @ centre_out
    out = np.stack([ndimage.affine_transform(world[..., ch], mat, offset, (size, size), order=1, mode="reflect")
                    for ch in range(3)], -1)
    m = None if mask is None else ndimage.affine_transform(mask, mat, offset, (size, size), order=0) > 0.5
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    a = rng.uniform(0, 2 * math.pi)
    out = out * (1 + rng.uniform(0, 0.15) * (math.cos(a) * xs + math.sin(a) * ys))[..., None] * rng.uniform(0.9, 1.1)
    if rng.random() < 0.5:
        out = ndimage.gaussian_filter(out, (rng.uniform(0.3, 0.9),) * 2 + (0,))
    out = out + rng.normal(0, rng.uniform(0.5, 3.0), out.shape)
    return np.clip(out, 0, 255).round().astype(np.uint8), m


def _defect(world: np.ndarray, donors: list[np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``world`` with one visible change and its footprint."""
    from ..pretraining.synth import draw_change, footprint_level

    for _ in range(20):
        img = world.copy()
        kind = str(rng.choice(_KINDS))
        r = world.shape[0] * math.exp(rng.uniform(math.log(0.035), math.log(0.11)))
        alpha = draw_change(img, kind, donors, rng, r)
        foot = alpha > footprint_level(kind)
        if foot.sum() >= 30 and float(np.abs(img - world).mean(axis=2)[foot].mean()) >= _MIN_VISIBLE:
            return img, foot.astype(np.float32)
    raise RuntimeError("no visible change could be drawn")  # pragma: no cover (never seen)


def _save(path: str, a: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(a).save(path)


def make_benchmark(out_dir: str, *, categories: tuple[str, ...] = CATEGORIES, n_train: int = 80, n_good: int = 30,
                   n_defect: int = 30, size: int = 256, seed: int = 0) -> dict[str, Any]:
    """Write the benchmark under ``out_dir`` (MVTec layout, see the module docstring) and ``benchmark.json``
    describing it; returns that description. Seeded: the same arguments write the same images."""
    from ..pretraining.sources import load_photos

    photos = {p.name.split(":", 1)[1]: p.pixels for p in load_photos(skimage=True, matplotlib=False)}
    unknown = [c for c in categories if c not in photos]
    if unknown:
        raise ValueError(f"unknown categories {unknown}; choose from {sorted(photos)}")
    for ci, cat in enumerate(categories):
        rng = np.random.default_rng([seed, ci])
        world = _square(photos[cat], round(size * _MARGIN))
        donors = [p for n, p in photos.items() if n != cat]  # foreign objects come from other photographs
        texture = cat in TEXTURES
        root = os.path.join(out_dir, cat)
        for i in range(n_train):
            _save(os.path.join(root, "train", "good", f"{i:03d}.png"), _view(world, None, rng, size, texture)[0])
        for i in range(n_good):
            _save(os.path.join(root, "test", "good", f"{i:03d}.png"), _view(world, None, rng, size, texture)[0])
        for i in range(n_defect):
            for _ in range(20):  # the change must show in the view, not only on the surface around it
                img, foot = _defect(world, donors, rng)
                view, m = _view(img, foot, rng, size, texture)
                if m is not None and m.sum() >= 30:
                    break
            else:  # pragma: no cover (never seen)
                raise RuntimeError(f"{cat}: no change landed in the view")
            _save(os.path.join(root, "test", "defect", f"{i:03d}.png"), view)
            _save(os.path.join(root, "ground_truth", "defect", f"{i:03d}.png"), (m * 255).astype(np.uint8))
    info = {"categories": list(categories), "textures": [c for c in categories if c in TEXTURES], "n_train": n_train,
            "n_good": n_good, "n_defect": n_defect, "size": size, "seed": seed,
            "source": "scikit-image bundled photographs; defects: anodet_core.pretraining.synth.draw_change"}
    with open(os.path.join(out_dir, "benchmark.json"), "w") as f:
        json.dump(info, f, indent=1)
    return info


@dataclass
class SingleImageResult:
    """One model on one category (or ``category="mean"``: the mean over categories)."""

    method: str
    category: str
    image_auroc: float
    pixel_auroc: float
    recall: float
    false_alarm_rate: float
    fit_seconds: float
    score_ms_per_image: float
    extra: dict[str, Any] = field(default_factory=dict)


def compare_single_image(root: str, methods: tuple[str, ...], *, preset: str | None = "lite",
                         overrides: dict[str, dict[str, Any]] | None = None, epochs: int = 40,
                         max_seconds: float = float("inf"), seed: int = 0, device: str = "cpu",
                         categories: tuple[str, ...] | None = None, progress: bool = False) -> list[SingleImageResult]:
    """Fit each of ``methods`` on every category's ``train/good`` (``fit_single_image`` with these settings) and
    evaluate it on ``test/good`` vs ``test/defect`` (masks from ``ground_truth/defect``); one result per method and
    category, then one ``mean`` row per method."""
    from .archs import config_input_size
    from .evaluation import evaluate_single_image
    from .fitting import fit_single_image
    from .folders import load_images, load_masks

    cats = categories or tuple(sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d, "train"))))
    if not cats:
        raise ValueError(f"no category folders (<category>/train/good) under {root}")
    results: list[SingleImageResult] = []
    for method in methods:
        over = dict((overrides or {}).get(method, {}))
        size = config_input_size(method, preset, over)
        rows = []
        for cat in cats:
            d = os.path.join(root, cat)
            normal, _ = load_images(os.path.join(d, "train", "good"), size)
            good, _ = load_images(os.path.join(d, "test", "good"), size)
            defect, names = load_images(os.path.join(d, "test", "defect"), size)
            masks = load_masks(os.path.join(d, "ground_truth", "defect"), names, size)
            fit = fit_single_image(method, normal, preset=preset, overrides=over, epochs=epochs,
                                   max_seconds=max_seconds, seed=seed, device=device)
            t0 = time.perf_counter()
            res = evaluate_single_image(fit.model, fit, good, defect, masks, device=device)
            score_ms = (time.perf_counter() - t0) * 1000 / (len(good) + len(defect))
            row = SingleImageResult(method, cat, float(res["image_auroc"]), float(res["pixel_auroc"]),
                                    float(res["recall"]), float(res["false_alarm_rate"]), fit.seconds, score_ms)
            rows.append(row)
            if progress:
                print(f"{method} {cat}: image AUROC {row.image_auroc:.3f}, pixel AUROC {row.pixel_auroc:.3f}, "
                      f"recall {row.recall:.3f}, false alarms {row.false_alarm_rate:.3f}, fit {row.fit_seconds:.1f} s",
                      flush=True)
        results += rows
        mean: dict[str, Any] = {k: float(np.mean([getattr(r, k) for r in rows])) for k in (
            "image_auroc", "pixel_auroc", "recall", "false_alarm_rate", "fit_seconds", "score_ms_per_image")}
        results.append(SingleImageResult(method, "mean", **mean))
    return results


def results_markdown(results: list[SingleImageResult]) -> str:
    """The mean rows as a table (one row per method), then image AUROC per category and method."""
    means = [r for r in results if r.category == "mean"]
    lines = ["| method | image AUROC | pixel AUROC | recall at threshold | false-alarm rate | fit s / category | "
             "score ms / image |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.method} | {r.image_auroc:.3f} | {r.pixel_auroc:.3f} | {r.recall:.3f} | {r.false_alarm_rate:.3f} "
              f"| {r.fit_seconds:.1f} | {r.score_ms_per_image:.1f} |" for r in means]
    cats = list(dict.fromkeys(r.category for r in results if r.category != "mean"))
    methods = list(dict.fromkeys(r.method for r in results))
    by = {(r.method, r.category): r for r in results}
    lines += ["", "| image AUROC | " + " | ".join(cats) + " |", "|---|" + "---|" * len(cats)]
    lines += [f"| {m} | " + " | ".join(f"{by[m, c].image_auroc:.3f}" if (m, c) in by else "" for c in cats) + " |"
              for m in methods]
    return "\n".join(lines)


def results_json(results: list[SingleImageResult]) -> list[dict[str, Any]]:
    """The results as JSON-ready dicts."""
    return [asdict(r) for r in results]
