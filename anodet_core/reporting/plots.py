"""The report's plots as PNG bytes (matplotlib's object API on an Agg canvas: no pyplot state, safe in threads).

- :func:`score_distribution`: capture scores per night (the depot's recent nights, this one highlighted) against
  the operating threshold;
- :func:`region_alarm_trend`: alarms per night of the regions that alarm most (the ``region_trend`` question);
- :func:`roc_pr_curves`: ``anodet evaluate``'s ROC and precision-recall curves.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd

DPI = 110


def _figure(width: float, height: float):  # noqa: ANN202 (matplotlib's Figure, imported lazily)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:  # noqa: ANN001
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def score_distribution(captures: pd.DataFrame, night: str, threshold: float | None, last: int = 14) -> bytes:
    """Box plots of ``capture_score`` per night (``captures``: rows with ``night``, ``capture_score``, ``decision``)
    for the ``last`` nights up to ``night``, alarms as red dots, the operating threshold as a dashed line."""
    nights = sorted(n for n in captures["night"].unique() if n <= night)[-last:]
    fig = _figure(max(5.0, 0.55 * len(nights) + 2.5), 3.2)
    ax = fig.add_subplot()
    data = [captures.loc[captures["night"] == n, "capture_score"].dropna().to_numpy(float) for n in nights]
    box = ax.boxplot([d if len(d) else np.array([np.nan]) for d in data], positions=range(len(nights)), widths=0.6,
                     patch_artist=True, showfliers=False)
    for n, patch in zip(nights, box["boxes"]):
        patch.set_facecolor("#f4a261" if n == night else "#d9e2ec")
    rng = np.random.default_rng(0)  # jitter only: the same page every time
    for i, n in enumerate(nights):
        rows = captures[(captures["night"] == n) & captures["capture_score"].notna()]
        alarm = rows["decision"].eq("anomalous").to_numpy()
        x = i + rng.uniform(-0.18, 0.18, len(rows))
        y = rows["capture_score"].to_numpy(float)
        ax.scatter(x[~alarm], y[~alarm], s=8, color="#486581", alpha=0.6, zorder=3)
        ax.scatter(x[alarm], y[alarm], s=14, color="#d62828", zorder=4, label="alarm" if i == 0 else None)
    if threshold is not None:
        ax.axhline(threshold, color="#d62828", linestyle="--", linewidth=1, label=f"threshold {threshold:.2f}")
    ax.set_xticks(range(len(nights)), [n[5:] for n in nights], rotation=45, ha="right")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("capture score")
    ax.set_title(f"capture scores per night (night {night} highlighted)", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def region_alarm_trend(trend: pd.DataFrame, night: str, top: int = 8, last: int = 14) -> bytes:
    """Alarms per night (``trend``: the ``region_trend`` question's rows) of the ``top`` regions with the most alarms
    over the ``last`` nights up to ``night``."""
    trend = trend[trend["night"] <= night]
    nights = sorted(trend["night"].unique())[-last:]
    trend = trend[trend["night"].isin(nights)].copy()
    trend["region"] = trend["train_id"].astype(str) + "/" + trend["car"].astype(str) + "/" + trend["region_id"].astype(str)
    totals = trend.groupby("region")["alarms"].sum().sort_values(ascending=False)
    regions = [r for r in totals.index[:top] if totals[r] > 0]
    fig = _figure(max(5.0, 0.55 * len(nights) + 3.5), 3.2)
    ax = fig.add_subplot()
    table = trend.pivot_table(index="night", columns="region", values="alarms", aggfunc="sum").reindex(nights).fillna(0)
    for r in regions:
        ax.plot(range(len(nights)), table[r].to_numpy(), marker="o", markersize=3, label=r)
    ax.set_xticks(range(len(nights)), [n[5:] for n in nights], rotation=45, ha="right")
    ax.set_ylabel("alarms")
    ax.set_title("alarms per night, regions that alarm most" if regions else "no alarms in these nights", fontsize=10)
    if regions:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    ax.yaxis.get_major_locator().set_params(integer=True)
    return _png(fig)


Curves = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # fpr, tpr, recall, precision


def image_curves(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> Curves:
    """ROC and precision-recall points of per-image scores against labels (ValueError unless both classes)."""
    from ..evaluation.metrics import roc_curve

    s, y = np.asarray(scores, float), np.asarray(labels, bool)
    if y.all() or not y.any():
        raise ValueError("curves need both normal and anomalous samples")
    fpr, tpr, _ = roc_curve(s, y)
    tp = np.cumsum(y[np.argsort(-s, kind="stable")])
    return fpr, tpr, tp / y.sum(), tp / np.arange(1, len(s) + 1)


def pixel_curves(pos_hist: np.ndarray, neg_hist: np.ndarray) -> Curves:
    """ROC and precision-recall points of pixel score histograms (:class:`~anodet_core.evaluation.metrics.PixelMetrics`)."""
    from ..evaluation.metrics import roc_curve_from_hist

    fpr, tpr, _ = roc_curve_from_hist(pos_hist, neg_hist)
    tp = np.cumsum(np.asarray(pos_hist, float)[::-1])
    fp = np.cumsum(np.asarray(neg_hist, float)[::-1])
    keep = (tp + fp) > 0
    return fpr, tpr, (tp / tp[-1])[keep], (tp / np.maximum(tp + fp, 1))[keep]


def roc_pr_curves(curves: Curves, title: str) -> bytes:
    """ROC (with its area) beside precision-recall (with average precision) of :func:`image_curves` or
    :func:`pixel_curves`."""
    fpr, tpr, recall, precision = curves
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    ap = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))
    fig = _figure(8.0, 3.6)
    a1, a2 = fig.subplots(1, 2)
    a1.plot(fpr, tpr, color="#1d3557")
    a1.plot([0, 1], [0, 1], color="#999", linestyle=":", linewidth=1)
    a1.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC (AUC {auc:.3f})")
    a2.plot(np.concatenate([[0.0], recall]), np.concatenate([[precision[0]], precision]), color="#e63946")
    a2.set(xlabel="recall", ylabel="precision", title=f"precision-recall (AP {ap:.3f})", ylim=(0, 1.02))
    fig.suptitle(title, fontsize=10)
    return _png(fig)
