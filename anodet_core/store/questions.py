"""The analysts' named questions: SQL views over the reports and the labels, created on every query connection.

Each view is plain DuckDB SQL over the views ``captures``, ``findings`` and ``labels`` (ground truth with each
capture's latest verdict over it), so an analyst can read it, run it under ``anodet query``, or build on it
(``select * from top_regions where depot = 'north'``). ``anodet query --top-regions`` and the other flags print
one of them. Only scored captures (status ok, registration_failed, no_history: a decision exists) count as alarms
or not; a capture that was not scored counts under ``not_scored``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Question:
    """A named question: the view's name, what it answers (``anodet query --help``), its SQL, its order and the
    columns it may be filtered on."""

    view: str
    help: str
    sql: str
    order_by: str
    filters: tuple[str, ...] = ("depot", "train_id", "region_id")


_REGION_KEY = "depot, train_id, car, region_id"

QUESTIONS: dict[str, Question] = {
    q.view: q
    for q in (
        Question(
            "top_regions",
            "regions that alarm most: captures scored, alarms, alarm rate, confirmed false alarms, last alarm night",
            f"""
            select {_REGION_KEY},
                   count(c.decision) as scored,
                   count(*) filter (where c.decision = 'anomalous') as alarms,
                   round(alarms / nullif(scored, 0), 4) as alarm_rate,
                   count(*) filter (where c.decision = 'anomalous' and l.anomalous = false) as false_alarms,
                   count(*) filter (where c.decision = 'anomalous' and l.anomalous = true) as confirmed,
                   max(c.night) filter (where c.decision = 'anomalous') as last_alarm_night,
                   round(max(c.capture_score), 4) as max_capture_score
            from captures c left join labels l using (depot, night, capture_id)
            group by {_REGION_KEY}
            """,
            "alarms desc, alarm_rate desc, depot, train_id, car, region_id",
        ),
        Question(
            "region_trend",
            "a region's nights (filter with --region, --train, --depot): alarms, mean and max capture score, findings",
            f"""
            select {_REGION_KEY}, c.night,
                   count(*) as captures,
                   count(c.decision) as scored,
                   count(*) filter (where c.decision = 'anomalous') as alarms,
                   round(avg(c.capture_score), 4) as mean_capture_score,
                   round(max(c.capture_score), 4) as max_capture_score,
                   coalesce(sum(c.n_findings), 0) as findings
            from captures c
            group by {_REGION_KEY}, c.night
            """,
            "depot, train_id, car, region_id, night",
        ),
        Question(
            "false_alarms",
            "per night: alarms, how many analysts confirmed or rejected (false alarms), the false-alarm rate of the "
            "reviewed, and misses (labelled anomalous, decided normal)",
            """
            select c.depot, c.night,
                   count(*) filter (where c.decision = 'anomalous') as alarms,
                   count(*) filter (where c.decision = 'anomalous' and l.anomalous = true) as confirmed,
                   count(*) filter (where c.decision = 'anomalous' and l.anomalous = false) as false_alarms,
                   count(*) filter (where c.decision = 'anomalous' and l.anomalous is null) as unreviewed,
                   round(false_alarms / nullif(confirmed + false_alarms, 0), 4) as false_alarm_rate,
                   count(*) filter (where c.decision = 'normal' and l.anomalous = true) as missed
            from captures c left join labels l using (depot, night, capture_id)
            group by c.depot, c.night
            """,
            "depot, night",
            ("depot",),
        ),
        Question(
            "night_summary",
            "per night: captures, scored and not, alarms, findings, failures by status, model versions, run time span",
            """
            select c.depot, c.night,
                   count(*) as captures,
                   count(*) filter (where c.status = 'ok') as ok,
                   count(*) filter (where c.status in ('registration_failed', 'no_history')) as scored_with_caveat,
                   count(*) filter (where c.decision is null) as not_scored,
                   count(*) filter (where c.decision = 'anomalous') as alarms,
                   coalesce(sum(c.n_findings), 0) as findings,
                   coalesce(string_agg(distinct c.status, ', ' order by c.status) filter (where c.decision is null), '')
                       as failures,
                   string_agg(distinct c.model_name || ':' || c.model_version, ', ') as models,
                   min(c.processed_at) as first_processed_at,
                   max(c.processed_at) as last_processed_at
            from captures c
            group by c.depot, c.night
            """,
            "depot, night",
            ("depot",),
        ),
    )
}


def question_sql(view: str, where: dict[str, object] | None = None) -> tuple[str, list[object]]:
    """``select * from <view>`` with equality filters (bound as parameters, never spliced) and the view's order."""
    q = QUESTIONS[view]
    where = {k: v for k, v in (where or {}).items() if v is not None}
    if set(where) - set(q.filters):
        raise ValueError(f"{view} can be filtered on {', '.join(q.filters)} only, not {', '.join(sorted(set(where) - set(q.filters)))}")
    clause = (" where " + " and ".join(f"{k} = ?" for k in where)) if where else ""
    return f"select * from {q.view}{clause} order by {q.order_by}", list(where.values())
