"""The quality table: every method on the corpus's held-out photographs, through the night's scoring path.

Each network is trained with the same recipe and the same budget (steps of 8 random 160 px crops, cosine
learning rate, the corpus's train split less a seeded tenth for validation), calibrated on that validation
tenth (threshold and minimum finding area, :mod:`anodet_core.scoring.calibration`), then evaluated at native
resolution on the test split with :func:`anodet_core.evaluation.evaluate.evaluate_model_on_pairs`. The classical
baseline has its level fitted on the same validation pairs. Optional extra rows score already-built models
(the shipped base, a fine-tuned one) the same way.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..evaluation.evaluate import evaluate_model_on_pairs
from ..registry.model_store import ModelCard
from ..scoring.calibration import calibrate
from ..training import TrainConfig, folder_pairs, split_indices, train_pairs
from .pretrain import load_split

__all__ = ["QualityRow", "DEFAULT_METHODS", "quality_table", "to_markdown"]

DEFAULT_METHODS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("AnoDFDNet base (ImageNet Lite0 encoder)", "base", {}),
    ("base, encoder from random init", "base", {"pretrained": False, "freeze_stages": 0}),
    ("base, L2-normalised features", "base", {"feature_norm": "l2"}),
    ("base, Transformer depth 0", "base", {"depth": 0}),
    ("AnoDFDNet lite (paper graph, 1/4 width)", "lite", {}),
    ("AnoDFDNet paper preset", "paper", {}),
)
COLUMNS = (("precision", "precision"), ("recall", "recall"), ("F1", "f1"), ("IoU", "iou"), ("pixel AUC", "auc"),
           ("image AUROC", "image_auroc"), ("F1 @op", "f1_at_op"), ("decision P", "decision_precision"),
           ("decision R", "decision_recall"), ("F1 covered", "f1_covered"), ("pixel AUC covered", "auc_covered"))


@dataclass
class QualityRow:
    """One method's held-out figures (keys of :func:`anodet_core.evaluation.evaluate.evaluate_pairs`) and its cost."""

    name: str
    metrics: dict[str, Any]
    steps: int
    train_seconds: float
    params: int


def _classical(val: Any) -> torch.nn.Module:
    from ..models import create_model
    from ..models.classical_diff import fit_offset

    model = create_model("classical_diff")
    fit_offset(model, val.cur, val.his, val.mask)  # type: ignore[arg-type]
    return model


def quality_table(corpus: str, steps: int, *, methods: Sequence[tuple[str, str, dict[str, Any]]] = DEFAULT_METHODS,
                  extra_models: Sequence[tuple[str, torch.nn.Module, ModelCard]] = (), seed: int = 0,
                  device: str = "cpu", bf16: bool = False, log: Any = print) -> list[QualityRow]:
    """Rows for ``extra_models``, the classical baseline and every method trained for ``steps`` steps."""
    from ..models import create_model

    data = load_split(corpus, "train")
    tr, va = split_indices(len(data), 0.1, seed)
    train, val = data.subset(tr), data.subset(va)
    test = folder_pairs(os.path.join(corpus, "test"))
    rows: list[QualityRow] = []

    def score(name: str, model: torch.nn.Module, card: ModelCard, n_steps: int, seconds: float) -> None:
        m = evaluate_model_on_pairs(model, card, test, device=device)
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows.append(QualityRow(name, m, n_steps, seconds, params))
        log(f"{name}: F1 {m['f1']:.3f} IoU {m['iou']:.3f} pixel AUC {m['auc']:.3f} image AUROC {m['image_auroc']:.3f}")

    for name, model, card in extra_models:
        score(name, model, card, int(card.extra.get("steps", 0)), float(card.extra.get("train_seconds", 0.0)))
    t0 = time.perf_counter()
    classical = _classical(val)
    cal = calibrate(classical, val, device)
    score("classical: registration + normalised smoothed difference", classical,
          ModelCard(name="classical_diff", arch="classical_diff", threshold=cal.threshold,
                    min_finding_area=cal.min_finding_area, no_history_score=cal.no_history_score), 0, time.perf_counter() - t0)
    for name, preset, overrides in methods:
        torch.manual_seed(seed)
        model = create_model("anodfdnet", preset=preset, **overrides)
        cfg = TrainConfig(epochs=10_000, max_steps=steps, batch_size=8, crop=160, lr=1e-3, lr_schedule="cosine",
                          channels_last=True, synthetic=0.3, seed=seed, device=device, bf16=bf16)
        res = train_pairs(model, train, val, cfg)
        cal = calibrate(model, val, device)
        card = ModelCard(name="anodfdnet", arch="anodfdnet", preset=preset, config={**overrides, **cal.config()},
                         threshold=cal.threshold, min_finding_area=cal.min_finding_area, no_history_score=cal.no_history_score)
        score(name, model, card, steps, res.seconds)
    return rows


def to_markdown(rows: Sequence[QualityRow], title: str) -> str:
    """A Markdown table of the rows (figures at 0.5 unless the column says @op)."""
    head = "| method | steps | train s | " + " | ".join(c for c, _ in COLUMNS) + " |"
    sep = "|---|---:|---:|" + "---:|" * len(COLUMNS)

    def fmt(v: Any) -> str:
        return "n/a" if v is None or (isinstance(v, float) and v != v) else f"{float(v):.3f}"

    lines = [f"**{title}**", "", head, sep]
    for r in rows:
        lines.append(f"| {r.name} | {r.steps} | {r.train_seconds:.0f} | "
                     + " | ".join(fmt(r.metrics.get(k)) for _, k in COLUMNS) + " |")
    return "\n".join(lines)
