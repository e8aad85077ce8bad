"""A night's report as one self-contained HTML page (``anodet report``; the nightly flow writes it to the store).

What the page shows, from the published night only (readers never see a half-written one):

- the summary: captures by decision and by status, model versions, the operating point, timings, the image AUROC
  against the night's labels when it has both kinds, the run and its generation;
- the plots: capture scores per night, alarms per night of the regions that alarm most, and the ROC and
  precision-recall curves of the capture score when the night is labelled (PNG files beside the page, embedded too);
- one card per finding, ranked by its peak score: crops of cur, of the history registered into cur's frame (the
  night's registration, :func:`anodet_core.imaging.prepare.align_pair`) and of the anomaly map over cur, and the
  whole capture with its findings outlined; the capture's verdict or label, and the ``anodet label`` line to give one;
- the captures that failed or were scored with a caveat, with their status and message;
- the night's verdicts, every one ever given.

A capture whose pictures cannot be drawn (its file gone since, its map missing) keeps its card, with the reason in
place of the pictures: one file never loses the page.
"""

from __future__ import annotations

import html
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.compute as pc

from ..imaging.io import stable_message
from ..store.layout import Store
from ..store.maps import read_map
from ..store.names import check_uri
from ..store.publish import read_commit
from ..store.query import run_query
from ..store.questions import question_sql
from ..text import printable
from . import MAX_FINDINGS, panels, plots

PLOT_FILES = {"scores": "scores.png", "region_trend": "region_trend.png", "roc_pr": "roc_pr.png"}


@dataclass
class NightPage:
    """A rendered page: its HTML, the PNG plots it links (file name -> bytes) and what it holds."""

    html: str
    plots: dict[str, bytes] = field(default_factory=dict)
    n_cards: int = 0
    n_findings: int = 0
    n_failed: int = 0


def _e(value: Any) -> str:
    """A value for HTML: "" for a null, control characters escaped, then HTML-escaped."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(printable(value))


def _night_rows(store: Store, table: str, depot: str, night: str) -> pd.DataFrame:
    return store.read_report(table, (pc.field("depot") == depot) & (pc.field("night") == night))


def _latest_verdicts(verdicts: pd.DataFrame) -> dict[str, dict[str, Any]]:
    return {r["capture_id"]: r for r in verdicts.drop_duplicates("capture_id", keep="last").to_dict("records")}


def _review(cid: str, latest: dict[str, dict[str, Any]], labels: dict[str, bool]) -> str:
    """The capture's verdict (or ground-truth label) as a line of the card."""
    v = latest.get(cid)
    if v is not None:
        note = f" — {_e(v['note'])}" if isinstance(v.get("note"), str) and v["note"] else ""
        return (f'<p class="verdict verdict-{_e(v["verdict"])}">verdict: <b>{_e(v["verdict"])}</b> by {_e(v["verdict_by"])} '
                f"at {_e(pd.Timestamp(v['verdict_at']).strftime('%Y-%m-%d %H:%M UTC'))}{note}</p>")
    if cid in labels:
        return f'<p class="verdict">label: <b>{"anomalous" if labels[cid] else "normal"}</b> (ground truth)</p>'
    return '<p class="verdict unreviewed">no verdict yet</p>'


class _Pictures:
    """Draws each capture's views once (a capture with several findings has several cards)."""

    def __init__(self, store: Store, depot: str, night: str, registration: str, allowed_uri_prefixes: Sequence[str]):
        self.store, self.depot, self.night = store, depot, night
        self.registration, self.allowed = registration, allowed_uri_prefixes
        self._views: dict[str, panels.CaptureViews | str] = {}

    def views(self, cap: dict[str, Any]) -> panels.CaptureViews | str:
        """The capture's views, or why they cannot be drawn."""
        cid = cap["capture_id"]
        if cid not in self._views:
            try:
                uris = [check_uri(cap[k], self.allowed) for k in ("uri", "history_uri")]
                cur, his = (self.store.read_bytes(u) for u in uris)
                score = read_map(self.store, self.depot, self.night, cid)
                self._views[cid] = panels.capture_views(cur, his, score, registration=self.registration)
            except Exception as exc:  # the card says why; the page goes on
                self._views[cid] = f"pictures unavailable: {stable_message(exc)}"
        return self._views[cid]


def _card(rank: int, f: dict[str, Any], cap: dict[str, Any], boxes: list[list[int]], index: int, threshold: float,
          pictures: _Pictures, review: str) -> str:
    cid = cap["capture_id"]
    views = pictures.views(cap)
    if isinstance(views, str):
        figs = f'<p class="unavailable">{_e(views)}</p>'
    else:
        uri = panels.finding_panels(views, boxes, index, threshold)
        figs = "".join(
            f'<figure><img src="{uri[k]}" alt="{_e(cap_)} of {_e(cid)} finding {f["finding_id"]}"><figcaption>{cap_}</figcaption></figure>'
            for k, cap_ in (("cur", "current"), ("his", "history, registered"), ("map", "anomaly map over current")))
        figs += (f'<figure class="frame"><img src="{uri["frame"]}" alt="{_e(cid)} outlined">'
                 f"<figcaption>whole capture, findings outlined (this one thicker)</figcaption></figure>")
    his = cap.get("history_capture_id") or cap.get("history_source") or "none"
    reg = ("registered" if cap.get("reg_ok") else "registration failed") if cap.get("reg_method") else ""
    return f"""
<article class="finding" id="finding-{_e(cid)}-{int(f['finding_id'])}" data-capture="{_e(cid)}" data-finding="{int(f['finding_id'])}">
  <header><h3>#{rank} · {_e(cid)} · finding {int(f['finding_id'])}</h3>
  <p>{_e(cap['train_id'])} / car {_e(cap['car'])} / {_e(cap['region_id'])} · peak {_e(float(f['peak_score']))} · mean
  {_e(float(f['mean_score']))} · {int(f['area_px'])} px · box ({int(f['x0'])}, {int(f['y0'])})–({int(f['x1'])}, {int(f['y1'])})
  · capture score {_e(cap.get('capture_score'))} · {int(cap.get('n_findings') or 0)} finding(s) · history {_e(his)} {_e(reg)}</p>
  {review}
  <p class="cmd">verdict: <code>anodet label --capture {_e(cid)} --verdict anomaly|normal [--mask FILE] [--note TEXT]</code></p>
  </header>
  <div class="panels">{figs}</div>
</article>"""


def _table(df: pd.DataFrame, cls: str) -> str:
    if df.empty:
        return f'<p class="{cls} empty">none</p>'
    head = "".join(f"<th>{_e(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>" for row in df.itertuples(index=False))
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _summary(caps: pd.DataFrame, commit: Any, auroc: float | None, n_findings: int) -> str:
    decisions = caps["decision"].fillna("not scored").value_counts()
    statuses = caps["status"].value_counts()
    models = sorted({f"{n}:{v}" for n, v in zip(caps["model_name"], caps["model_version"]) if isinstance(n, str)})
    thr = caps["threshold"].dropna()
    rows = [("captures", len(caps)),
            ("by decision", ", ".join(f"{k}: {v}" for k, v in decisions.items())),
            ("by status", ", ".join(f"{k}: {v}" for k, v in statuses.items())),
            ("findings", n_findings),
            ("model", ", ".join(models) or "none"),
            ("threshold", f"{thr.iloc[0]:.3f}" if len(thr) else "")]
    stages = {k: caps[f"t_{k}_ms"].dropna() for k in ("decode", "register", "infer", "write") if f"t_{k}_ms" in caps}
    if any(len(v) for v in stages.values()):
        rows.append(("per capture (mean ms)", ", ".join(f"{k} {v.mean():.0f}" for k, v in stages.items() if len(v))))
    done = caps["processed_at"].dropna()
    if len(done):
        span = (done.max() - done.min()).total_seconds()
        rows.append(("processed", f"{done.min():%Y-%m-%d %H:%M:%S} to {done.max():%H:%M:%S} UTC ({span:.0f} s)"))
    if auroc is not None:
        rows.append(("image AUROC against the night's labels", f"{auroc:.3f}"))
    if commit is not None:
        rows.append(("published", f"generation {commit.generation} at {commit.committed_at}, run {commit.run_id or '-'}"))
    return "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)


def build_night_page(store: Store, depot: str, night: str, *, max_findings: int = MAX_FINDINGS, registration: str = "auto",
                     allowed_uri_prefixes: Sequence[str] = (), plot_files: dict[str, str] | None = None) -> NightPage:
    """The page of one published night (see the module docstring); LookupError when the night has no report.

    ``plot_files``: the name each plot is linked under (default :data:`PLOT_FILES`; the caller writes them beside
    the page)."""
    from ..evaluation.metrics import roc_auc

    caps = _night_rows(store, "captures", depot, night)
    if caps.empty:
        raise LookupError(f"depot {depot!r} night {night} has no published report")
    finds = _night_rows(store, "findings", depot, night)
    plot_files = plot_files or PLOT_FILES
    commit = read_commit(store, depot, night)
    verdicts = store.read_verdicts(depot, night)
    latest = _latest_verdicts(verdicts)
    lab = store.read_labels(depot, night).dropna(subset=["anomalous"])
    labels = {str(c): bool(a) for c, a in zip(lab["capture_id"], lab["anomalous"])}
    thr = caps["threshold"].dropna()
    threshold = float(thr.iloc[0]) if len(thr) else 0.5

    scored = caps[caps["capture_score"].notna() & caps["capture_id"].isin(list(labels))]
    y = scored["capture_id"].map(labels).to_numpy(bool)
    auroc = float(roc_auc(scored["capture_score"].to_numpy(float), y)) if 0 < y.sum() < len(y) else None

    # plots: this depot's recent nights, and the night's own curves when labelled
    history = store.read_report("captures", pc.field("depot") == depot)[["night", "capture_score", "decision"]]
    made = {"scores": plots.score_distribution(history, night, threshold)}
    trend = run_query(store, *question_sql("region_trend", {"depot": depot}))
    made["region_trend"] = plots.region_alarm_trend(trend, night)
    if auroc is not None:
        made["roc_pr"] = plots.roc_pr_curves(plots.image_curves(scored["capture_score"].to_numpy(float), y),
                                             f"capture score against the labels, {depot} {night}")
    plot_html = "".join(f'<figure class="plot"><a href="{_e(plot_files[k])}"><img src="{panels.png_data_uri(v)}" '
                        f'alt="{_e(k)} plot"></a><figcaption><a href="{_e(plot_files[k])}">{_e(plot_files[k])}</a>'
                        f"</figcaption></figure>" for k, v in made.items())

    # finding cards, ranked by peak score
    by_id = {r["capture_id"]: r for r in caps.to_dict("records")}
    finds = finds.sort_values(["peak_score", "capture_id", "finding_id"], ascending=[False, True, True], kind="stable")
    per_capture = {cid: g.sort_values("finding_id") for cid, g in finds.groupby("capture_id")}
    boxes = {cid: g[["x0", "y0", "x1", "y1"]].to_numpy(int).tolist() for cid, g in per_capture.items()}
    order = {cid: g["finding_id"].tolist() for cid, g in per_capture.items()}
    pictures = _Pictures(store, depot, night, registration, allowed_uri_prefixes)
    cards = []
    for rank, f in enumerate(finds.head(max_findings).to_dict("records"), 1):
        cap = by_id.get(f["capture_id"])
        if cap is None:  # a finding of a capture the report does not hold: not drawable, still counted below
            continue
        cid = f["capture_id"]
        cards.append(_card(rank, f, cap, boxes[cid], order[cid].index(f["finding_id"]), threshold, pictures,
                           _review(cid, latest, labels)))
    more = len(finds) - len(finds.head(max_findings))
    more_html = (f'<p class="more">{more} more findings not shown (<code>anodet query "select * from findings where '
                 f"depot = '{_e(depot)}' and night = '{_e(night)}' order by peak_score desc\"</code>)</p>" if more else "")

    failed = caps[caps["status"] != "ok"].sort_values(["status", "capture_id"])
    failed_cols = [c for c in ("capture_id", "train_id", "car", "region_id", "status", "error", "history_source", "uri")
                   if c in failed]
    verdict_cols = ["verdict_at", "capture_id", "verdict", "anomaly_type", "verdict_by", "note", "mask_uri"]
    title = f"anodet · night {night} at depot {depot}"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
<section id="summary"><h2>Summary</h2><table class="summary">{_summary(caps, commit, auroc, len(finds))}</table></section>
<section id="plots"><h2>Plots</h2><div class="plots">{plot_html}</div></section>
<section id="findings"><h2>Findings ({len(finds)}), highest peak score first</h2>
{''.join(cards) if cards else '<p class="empty">no findings this night</p>'}{more_html}</section>
<section id="failed"><h2>Captures that failed or were scored with a caveat ({len(failed)})</h2>
{_table(failed[failed_cols], "failed")}</section>
<section id="verdicts"><h2>Verdicts ({len(verdicts)})</h2>{_table(verdicts[verdict_cols], "verdicts")}</section>
</body></html>
"""
    return NightPage(page, {plot_files[k]: v for k, v in made.items()}, len(cards), len(finds), len(failed))


def write_night_page(store: Store, depot: str, night: str, out: str | None = None, **kw: Any) -> str:
    """Build the page and write it with its plots: to the store (:meth:`Store.page_rel`) or, with ``out``, to that
    local HTML file (plots beside it, named after it); the page last, so it never links a plot not yet there.
    Returns where the page is (a URL, or the local path)."""
    if out is None:
        page = build_night_page(store, depot, night, **kw)
        for name, data in page.plots.items():
            store.write_bytes(store.page_rel(depot, night, name), data)
        rel = store.page_rel(depot, night)
        store.write_text(rel, page.html)
        return store.url(rel)
    path = Path(out)
    names = {k: f"{path.stem}-{v}" for k, v in PLOT_FILES.items()}
    page = build_night_page(store, depot, night, plot_files=names, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    for name, data in page.plots.items():
        (path.parent / posixpath.basename(name)).write_bytes(data)
    path.write_text(page.html, encoding="utf-8")
    return str(path)


_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1f2933; background: #f7f9fb; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #cbd2d9; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; background: #fff; }
th, td { border: 1px solid #e4e7eb; padding: .25em .6em; text-align: left; vertical-align: top; }
table.summary th { background: #f0f4f8; width: 16em; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; } .plot img { max-width: 100%; border: 1px solid #e4e7eb; background: #fff; }
article.finding { background: #fff; border: 1px solid #d9e2ec; border-radius: 6px; margin: 1em 0; padding: .6em 1em; }
article.finding h3 { margin: .2em 0; font-size: 1.05em; } article.finding header p { margin: .2em 0; }
.panels { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: .6em; align-items: start; }
.panels figure { margin: 0; } .panels img { width: 100%; height: auto; image-rendering: auto; border: 1px solid #e4e7eb; }
.panels figure.frame { grid-column: 1 / -1; max-width: 768px; }
figcaption { font-size: .85em; color: #52606d; }
.verdict-anomaly b { color: #b42318; } .verdict-normal b { color: #027a48; } .unreviewed { color: #7b8794; }
.cmd code { font-size: .85em; background: #f0f4f8; padding: .1em .3em; } .unavailable { color: #b42318; }
"""
