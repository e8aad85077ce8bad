"""``anodet evaluate --plots DIR``: its ROC and precision-recall curves as PNG and a Markdown report that links them.

The curves are drawn by :func:`anodet_core.reporting.plots.roc_pr_curves`, the night page's: per image from the
capture (or image) scores against the labels, and, for paired models, per pixel from the evaluation's pixel
score histograms (the paper's pixel figures). A curve that needs both classes is left out, with the reason in
the report, when the split has only one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from . import plots

REPORT = "evaluate.md"


def evaluation_plots(image_scores: Sequence[float] | np.ndarray, image_labels: Sequence[bool] | np.ndarray,
                     pixel_hists: tuple[np.ndarray, np.ndarray] | None, title: str) -> tuple[dict[str, bytes], list[str]]:
    """``({file name: PNG bytes}, [why a curve is missing])``: ``image_roc_pr.png`` and, with ``pixel_hists``,
    ``pixel_roc_pr.png``."""
    made: dict[str, bytes] = {}
    missing: list[str] = []
    try:
        made["image_roc_pr.png"] = plots.roc_pr_curves(plots.image_curves(image_scores, image_labels),
                                                       f"per image: {title}")
    except ValueError as exc:
        missing.append(f"image curves: {exc}")
    if pixel_hists is not None:
        pos, neg = pixel_hists
        if np.sum(pos) and np.sum(neg):
            made["pixel_roc_pr.png"] = plots.roc_pr_curves(plots.pixel_curves(pos, neg), f"per pixel: {title}")
        else:
            missing.append("pixel curves: the split needs both anomalous and normal pixels")
    return made, missing


def write_evaluation_report(out_dir: str, summary_md: str, made: dict[str, bytes], missing: list[str]) -> list[str]:
    """Write the PNGs, then ``evaluate.md`` (``summary_md`` and a link to each, and why any is missing) into
    ``out_dir`` (created); the paths written, the report last."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, data in made.items():
        path = os.path.join(out_dir, name)
        with open(path, "wb") as f:
            f.write(data)
        paths.append(path)
    lines = [summary_md.rstrip(), "", "## Curves", ""]
    lines += [f"![{name[:-4]}]({name})" for name in made]
    lines += [f"- not drawn: {why}" for why in missing]
    report = os.path.join(out_dir, REPORT)
    with open(report, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return [*paths, report]
