"""Method comparison in the layout of the AnoDFDNet paper: Table I (methods) and Table III (Transformer depth).

Every method is trained by the same trainer (:func:`anodet_core.training.train_pairs`) with the same
:class:`TrainConfig`, the same seeded 8:2 train/validation split of the training pairs and the same seed for
the weight initialisation, and is measured on the same test pairs with the metrics module: pixel confusion
summed over all test pixels at score > 0.5, at model resolution (256x256, :func:`pixel_metrics`), plus the
pixel ROC-AUC. The pairs are decoded, registered and resized once and shared by every method.

Columns: Pre(cision), Re(call), OA (overall accuracy), F1, IoU (of the anomaly class), AUC, parameter count
and training seconds per epoch.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..training import (
    LabelledPair,
    PairArrays,
    TrainConfig,
    TrainResult,
    folder_pairs,
    pixel_metrics,
    split_indices,
    store_pairs,
    train_pairs,
)

__all__ = [
    "MethodResult",
    "table_one_methods",
    "table_three_methods",
    "resolve_overrides",
    "run_comparison",
    "to_markdown",
    "write_outputs",
    "folder_split",
    "depot_split",
]

# (display name, registry architecture)
TABLE_ONE = (("AnoDFDNet", "anodfdnet"), ("Unet-cat", "unet_cat"), ("FC-Siam-diff", "fc_siam_diff"))
CLASSICAL = ("Classical (registration + normalised smoothed difference)", "classical_diff")
"""Shown in every table: what the deep models buy over it. Nothing is trained; its one level is fitted on the
validation split (best pixel F1), as the networks' thresholds are."""
METRIC_COLUMNS = (("Pre", "precision"), ("Re", "recall"), ("OA", "oa"), ("F1", "f1"), ("IoU", "iou"), ("AUC", "auc"))


@dataclass
class MethodResult:
    """One method's row: its identity, test-split pixel metrics, size, training time and test ROC curve."""

    name: str
    arch: str
    preset: str
    overrides: dict
    metrics: dict[str, float]  # PixelMetrics.compute() on the test split: tp fp tn fn precision recall oa f1 iou auc eer
    params: int
    train_seconds: float
    epochs: int  # epochs actually run (the wall-time limit may stop early)
    seconds_per_epoch: float
    roc: tuple[np.ndarray, np.ndarray]  # (fpr, tpr) on the test pixels; empty arrays when one class is missing
    best_epoch: int = 0  # epoch of the kept (best validation F1) weights


def table_one_methods() -> list[tuple[str, str, dict]]:
    """Table I rows ``(display name, architecture, overrides)``: AnoDFDNet and the two paired baselines, no overrides.

    The preset is not part of a row: :func:`run_comparison` applies its ``preset`` to every method.
    """
    return [(name, arch, {}) for name, arch in TABLE_ONE]


def table_three_methods(layers: Sequence[int]) -> list[tuple[str, str, dict]]:
    """Table III rows: AnoDFDNet with Transformer depth L for each L in ``layers``."""
    return [(f"AnoDFDNet L={int(L)}", "anodfdnet", {"depth": int(L)}) for L in layers]


def resolve_overrides(methods: Sequence[tuple[str, str, dict]], extra: dict[str, Any] | None) -> list[tuple[str, str, dict]]:
    """Merge user overrides into every method (the method's own overrides, e.g. the depth, win).

    ``extra`` is either flat (``{"widths": [8, 8, 8, 8]}``: applied to every method) or keyed by architecture
    (``{"anodfdnet": {...}, "unet_cat": {...}}``: each method gets its architecture's entry), since the model
    configs have different fields.
    """
    if not extra:
        return [(n, a, dict(o)) for n, a, o in methods]
    from ..models import list_models

    per_arch = all(k in list_models() and isinstance(v, dict) for k, v in extra.items())
    out = []
    for name, arch, own in methods:
        base = dict(extra.get(arch, {})) if per_arch else dict(extra)
        base.update(own)
        out.append((name, arch, base))
    return out


# ------------------------------------------------------------------------------------------ data


def _read_file(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def folder_split(root: str, seed: int = 0) -> tuple[list[LabelledPair], list[LabelledPair], str, Callable[[str], bytes]]:
    """Training and test pairs of a paired folder dataset, a sentence saying where they come from, and the reader.

    ``root/train`` + ``root/test`` when both exist (``root/val`` joins the training pairs: the trainer makes
    its own 8:2 validation split); otherwise a seeded 80/20 split of the pair folders of ``root`` itself.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset folder not found: {root}")
    tr_dir, te_dir, va_dir = (os.path.join(root, s) for s in ("train", "test", "val"))
    if os.path.isdir(tr_dir) and os.path.isdir(te_dir):
        train = folder_pairs(tr_dir)
        extra = folder_pairs(va_dir) if os.path.isdir(va_dir) else []
        test = folder_pairs(te_dir)
        note = f"data {root}: {len(train)} train/ pairs" + (f" + {len(extra)} val/ pairs" if extra else "") + f", {len(test)} test/ pairs"
        train = train + extra
    else:
        pairs = folder_pairs(root)
        tr, te = split_indices(len(pairs), 0.2, seed)
        train, test = [pairs[i] for i in tr], [pairs[i] for i in te]
        note = (f"data {root}: no train/ and test/ folders, so a seeded (seed {seed}) 80/20 split of its "
                f"{len(pairs)} pairs: {len(train)} train, {len(test)} test")
    if not train or not test:
        raise ValueError(f"need training and test pairs (folders with cur.* and his.*) under {root}; "
                         f"found {len(train)} train, {len(test)} test")
    return train, test, note, _read_file


def depot_split(store: Any, depot: str) -> tuple[list[LabelledPair], list[LabelledPair], str, Callable[[str], bytes]]:
    """Labelled nights of a depot: the last night is the test split (as in ``anodet train``), the others train."""
    nights = store.nights(depot)
    if len(nights) < 2:
        raise ValueError(f"depot {depot!r} needs at least 2 nights (train + held-out test), found {nights}")
    train = store_pairs(store, depot, nights[:-1])
    test = store_pairs(store, depot, nights[-1:])
    if not train or not test:
        raise ValueError(f"depot {depot!r}: need labelled pairs in the training nights and in the last night; "
                         f"found {len(train)} train, {len(test)} test")
    note = (f"depot {depot}: {len(train)} labelled pairs from nights {nights[0]}..{nights[-2]} for training, "
            f"{len(test)} from night {nights[-1]} for test")
    return train, test, note, store.read_bytes


# ------------------------------------------------------------------------------------------ comparison


def run_comparison(
    train: PairArrays,
    test: PairArrays,
    methods: list[tuple[str, str, dict]],
    preset: str,
    cfg: TrainConfig,
    progress: bool = False,
) -> list[MethodResult]:
    """Train every method on ``train`` (seeded 8:2 train/validation split, best validation F1 kept) and
    measure it on ``test``: pixel metrics at > 0.5 summed over all test pixels at model resolution, plus AUC."""
    from ..models import create_model

    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"need training and test pairs, got {len(train)} and {len(test)}")
    from ..models.classical_diff import fit_offset

    tr, va = split_indices(len(train), 0.2, cfg.seed)
    fit, val = train.subset(tr), (train.subset(va) if va else None)
    results: list[MethodResult] = []
    for i, (name, arch, overrides) in enumerate(methods):
        torch.manual_seed(cfg.seed)  # same initialisation stream for every method
        classical = arch == CLASSICAL[1]
        model = create_model(arch, preset=None if classical else preset, **overrides)
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if progress:
            print(f"[{i + 1}/{len(methods)}] {name}: {arch} preset={preset} {overrides or ''} "
                  f"({params:,} params), {len(fit)} train / {len(val) if val else 0} val pairs", flush=True)
        if classical:
            t0 = time.perf_counter()
            calib = val if val is not None and val.mask.any() else train
            fit_offset(model, calib.cur, calib.his, calib.mask)  # type: ignore[arg-type]
            res = TrainResult({}, 0, {}, [], time.perf_counter() - t0)
        else:
            res = train_pairs(model, fit, val, cfg, progress=progress)
        pm = pixel_metrics(model, test, cfg.device, threshold=0.5)
        metrics = pm.compute()
        if pm.pos_hist.sum() and pm.neg_hist.sum():
            fpr, tpr, _ = pm.roc_curve()
        else:
            fpr, tpr = np.zeros(0), np.zeros(0)
        epochs = len(res.history)
        results.append(MethodResult(
            name=name, arch=arch, preset=preset, overrides=dict(overrides), metrics=metrics, params=params,
            train_seconds=res.seconds, epochs=epochs, seconds_per_epoch=res.seconds / max(epochs, 1),
            roc=(np.asarray(fpr, float), np.asarray(tpr, float)), best_epoch=res.best_epoch,
        ))
        if progress:
            m = metrics
            print(f"    {name}: F1 {m['f1']:.4f} IoU {m['iou']:.4f} AUC {m['auc']:.4f} "
                  f"({epochs} epochs, {res.seconds:.0f} s)", flush=True)
        del model
    return results


# ------------------------------------------------------------------------------------------ outputs


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def to_markdown(results: Sequence[MethodResult], title: str) -> str:
    """A Markdown table: Method | Pre | Re | OA | F1 | IoU | AUC | params | s/epoch."""
    head = ["Method"] + [c for c, _ in METRIC_COLUMNS] + ["params", "s/epoch"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.name] + [_fmt(float(r.metrics[k])) for _, k in METRIC_COLUMNS] + [f"{r.params:,}", f"{r.seconds_per_epoch:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("method", "arch", "preset", "overrides", "precision", "recall", "oa", "f1", "iou", "auc", "eer",
              "tp", "fp", "tn", "fn", "params", "epochs", "best_epoch", "train_seconds", "seconds_per_epoch")


def _csv_row(r: MethodResult) -> dict[str, Any]:
    row: dict[str, Any] = {"method": r.name, "arch": r.arch, "preset": r.preset, "overrides": json.dumps(r.overrides, sort_keys=True)}
    for k in ("precision", "recall", "oa", "f1", "iou", "auc", "eer"):
        row[k] = repr(float(r.metrics.get(k, float("nan"))))
    for k in ("tp", "fp", "tn", "fn"):
        row[k] = int(r.metrics[k])
    row.update(params=r.params, epochs=r.epochs, best_epoch=r.best_epoch, train_seconds=repr(float(r.train_seconds)),
               seconds_per_epoch=repr(float(r.seconds_per_epoch)))
    return row


def _roc_png(results: Sequence[MethodResult], path: str, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5), dpi=100)  # Agg canvas without touching the global pyplot backend
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for r in results:
        fpr, tpr = r.roc
        if len(fpr):
            ax.plot(fpr, tpr, lw=1.5, label=f"{r.name} (AUC {_fmt(float(r.metrics['auc']))})")
        else:
            ax.plot([], [], label=f"{r.name} (AUC n/a: one class in test)")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
    ax.set(xlim=(0, 1), ylim=(0, 1.005), xlabel="false positive rate (pixels)", ylabel="true positive rate (pixels)", title=title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def write_outputs(results: Sequence[MethodResult], out_dir: str, stem: str, title: str | None = None) -> dict[str, str]:
    """Write ``stem.md`` (the table), ``stem.csv`` (all numbers) and ``stem_roc.png`` (pixel ROC of every method)."""
    os.makedirs(out_dir, exist_ok=True)
    title = title or stem
    paths = {k: os.path.join(out_dir, f"{stem}{suffix}") for k, suffix in (("markdown", ".md"), ("csv", ".csv"), ("roc", "_roc.png"))}
    with open(paths["markdown"], "w", encoding="utf-8") as fh:
        fh.write(to_markdown(results, title))
    with open(paths["csv"], "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in results:
            w.writerow(_csv_row(r))
    _roc_png(results, paths["roc"], title)
    return paths


@dataclass
class ComparisonRun:
    """What :func:`compare` did: the data note, the results, the title and the files written."""

    note: str
    title: str
    results: list[MethodResult]
    paths: dict[str, str] = field(default_factory=dict)
    prepare_seconds: float = 0.0


def compare(
    train_set: Sequence[LabelledPair],
    test_set: Sequence[LabelledPair],
    read: Callable[[str], bytes],
    *,
    note: str,
    preset: str = "lite",
    layers: Sequence[int] | None = None,
    overrides: dict[str, Any] | None = None,
    cfg: TrainConfig | None = None,
    out_dir: str = "anodet-compare",
    registration: str = "auto",
    progress: bool = False,
) -> ComparisonRun:
    """Prepare the pairs once, run Table I (or Table III with ``layers``) and write the outputs."""
    from ..training import prepare_arrays

    cfg = cfg or TrainConfig()
    t0 = time.perf_counter()
    train = prepare_arrays(read, list(train_set), registration=registration, progress=progress)
    test = prepare_arrays(read, list(test_set), registration=registration, progress=progress)
    prep = time.perf_counter() - t0
    if layers:
        methods, stem = table_three_methods(layers), "table3_depth"
        title = f"Table III: AnoDFDNet Transformer depth L (preset {preset})"
    else:
        methods, stem = table_one_methods(), "table1_methods"
        title = f"Table I: methods (preset {preset})"
    methods = methods + [(CLASSICAL[0], CLASSICAL[1], {})]
    methods = resolve_overrides(methods[:-1], overrides) + methods[-1:]  # user overrides are the networks'
    results = run_comparison(train, test, methods, preset, cfg, progress=progress)
    paths = write_outputs(results, out_dir, stem, title)
    return ComparisonRun(note, title, results, paths, prep)
