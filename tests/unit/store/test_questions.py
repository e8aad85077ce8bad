"""The named questions on a generated multi-night, two-depot store, checked against pandas over the same rows."""

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from anodet_core.store.layout import Store
from anodet_core.store.query import run_query
from anodet_core.store.questions import QUESTIONS, question_sql
from anodet_core.store.schemas import VerdictRow
from flows.cli import main

UTC = dt.UTC
NIGHTS = ["2026-02-01", "2026-02-02", "2026-02-03", "2026-02-04"]
STATUSES = ["ok"] * 8 + ["registration_failed", "no_history", "missing", "invalid_image"]


def _store(tmp_path) -> tuple[Store, pd.DataFrame]:
    """Random nights (seeded): per capture a status, a decision when scored, a score, findings; labels on some nights
    and a verdict that overrides one label; every row also returned, with its label, for the pandas side."""
    store = Store(str(tmp_path / "store"))
    rng = np.random.default_rng(7)
    everything = []
    for depot in ("north", "south"):
        for ni, night in enumerate(NIGHTS):
            rows = []
            for train in ("T1", "T2"):
                for r in range(4):
                    status = str(rng.choice(STATUSES))
                    scored = status in ("ok", "registration_failed", "no_history")
                    # R00 alarms often, R03 never
                    p = (0.8, 0.3, 0.1, 0.0)[r]
                    decision = ("anomalous" if rng.random() < p else "normal") if scored else None
                    score = float(rng.random()) if scored else None
                    rows.append(dict(capture_id=f"{depot}-{night}-{train}-R{r:02d}", train_id=train, car=1,
                                     region_id=f"R{r:02d}", status=status, decision=decision,
                                     captured_at=dt.datetime(2026, 2, 1 + ni, 1, r, tzinfo=UTC), uri="x.jpg",
                                     capture_score=score, n_findings=int(rng.integers(1, 4)) if decision == "anomalous" else 0,
                                     model_name="anodfdnet", model_version=str(1 + ni // 2),
                                     processed_at=dt.datetime(2026, 2, 1 + ni, 5, r, tzinfo=UTC)))
            store.write_report("captures", depot, night, rows)
            labelled = [r for r in rows if r["decision"] is not None and rng.random() < 0.6] if ni % 2 == 0 else []
            truth = {r["capture_id"]: bool(rng.random() < 0.5) for r in labelled}
            if labelled:
                store.write_labels(depot, night, [dict(capture_id=c, anomalous=a) for c, a in truth.items()])
            everything += [{**r, "depot": depot, "night": night, "label": truth.get(r["capture_id"])} for r in rows]
    # an analyst reverses one label and reviews one unlabelled capture
    df = pd.DataFrame(everything)
    flip = df[df["label"].notna()].iloc[0]
    new = df[df["label"].isna() & df["decision"].eq("anomalous")].iloc[0]
    for row, verdict in ((flip, "normal" if flip["label"] else "anomaly"), (new, "normal")):
        store.add_verdict(row["depot"], row["night"], VerdictRow(capture_id=row["capture_id"], verdict=verdict,
                                                                 verdict_by="ana", verdict_at=dt.datetime.now(UTC)))
        df.loc[df["capture_id"] == row["capture_id"], "label"] = verdict == "anomaly"
    return store, df


@pytest.fixture(scope="module")
def depot(tmp_path_factory):
    return _store(tmp_path_factory.mktemp("questions"))


def test_top_regions_counts_alarms_and_reviewed_false_alarms(depot):
    store, df = depot
    got = run_query(store, *question_sql("top_regions")).set_index(["depot", "train_id", "car", "region_id"])
    assert len(got) == 2 * 2 * 4
    g = df.groupby(["depot", "train_id", "car", "region_id"])
    alarms = g["decision"].apply(lambda s: int((s == "anomalous").sum()))
    false_alarms = g.apply(lambda x: int(((x["decision"] == "anomalous") & (x["label"] == False)).sum()))  # noqa: E712
    assert got["alarms"].to_dict() == alarms.to_dict()
    assert got["scored"].to_dict() == g["decision"].count().to_dict()
    assert got["false_alarms"].to_dict() == false_alarms.to_dict()
    assert list(got["alarms"]) == sorted(got["alarms"], reverse=True)  # most alarming first
    assert (got.xs("R03", level="region_id")["alarms"] == 0).all()
    only = run_query(store, *question_sql("top_regions", {"depot": "south", "region_id": "R00"}))
    assert set(only["depot"]) == {"south"} and set(only["region_id"]) == {"R00"} and len(only) == 2


def test_region_trend_is_one_row_per_night(depot):
    store, df = depot
    got = run_query(store, *question_sql("region_trend", {"depot": "north", "train_id": "T1", "region_id": "R00"}))
    assert got["night"].tolist() == NIGHTS
    mine = df[(df["depot"] == "north") & (df["train_id"] == "T1") & (df["region_id"] == "R00")].set_index("night")
    assert got["alarms"].tolist() == [int(d == "anomalous") for d in mine.loc[NIGHTS, "decision"]]
    assert got["findings"].tolist() == mine.loc[NIGHTS, "n_findings"].tolist()


def test_false_alarms_per_night_use_labels_with_verdicts_over_them(depot):
    store, df = depot
    got = run_query(store, *question_sql("false_alarms")).set_index(["depot", "night"])
    assert len(got) == 2 * len(NIGHTS)
    for (d, n), row in got.iterrows():
        x = df[(df["depot"] == d) & (df["night"] == n)]
        alarm = x["decision"] == "anomalous"
        assert row["alarms"] == alarm.sum()
        assert row["false_alarms"] == (alarm & x["label"].eq(False)).sum()
        assert row["confirmed"] == (alarm & x["label"].eq(True)).sum()
        assert row["unreviewed"] == (alarm & x["label"].isna()).sum()
        assert row["missed"] == ((x["decision"] == "normal") & x["label"].eq(True)).sum()
        reviewed = row["confirmed"] + row["false_alarms"]
        assert (pd.isna(row["false_alarm_rate"]) if reviewed == 0 else
                row["false_alarm_rate"] == pytest.approx(row["false_alarms"] / reviewed, abs=1e-4))
    assert got["false_alarms"].sum() > 0 and got["unreviewed"].sum() > 0  # the generated store exercises both


def test_night_summary_counts_statuses_and_models(depot):
    store, df = depot
    got = run_query(store, *question_sql("night_summary", {"depot": "south"}))
    assert got["night"].tolist() == NIGHTS and set(got["depot"]) == {"south"}
    for row in got.itertuples():
        x = df[(df["depot"] == "south") & (df["night"] == row.night)]
        assert row.captures == len(x) and row.ok == (x["status"] == "ok").sum()
        assert row.not_scored == x["decision"].isna().sum()
        assert row.alarms == (x["decision"] == "anomalous").sum()
        failed = sorted(set(x.loc[x["decision"].isna(), "status"]))
        assert row.failures == ", ".join(failed)
        assert row.models == f"anodfdnet:{1 + NIGHTS.index(row.night) // 2}"


def test_questions_are_views_for_raw_sql_and_on_an_empty_store(depot, tmp_path):
    store, _ = depot
    n = run_query(store, "select sum(alarms) n from top_regions where depot = 'north'")["n"].iloc[0]
    assert n == run_query(store, "select count(*) n from captures where depot = 'north' and decision = 'anomalous'")["n"].iloc[0]
    assert len(run_query(store, "select * from verdicts")) == 2
    empty = Store(str(tmp_path / "empty"))
    for view in QUESTIONS:
        assert run_query(empty, *question_sql(view)).empty


def test_query_cli_named_questions_formats_and_errors(depot, capsys):
    store, _ = depot
    assert main(["query", "--store", store.root, "--trend", "--region", "R01", "--depot", "north", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["region_id"] for r in rows} == {"R01"} and len(rows) == 2 * len(NIGHTS)
    assert main(["query", "--store", store.root, "--night-summary", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("depot,night,captures,ok,")
    assert main(["query", "--store", store.root, "--top-regions"]) == 0
    assert "alarm_rate" in capsys.readouterr().out
    for argv, message in ((["--trend"], "--trend needs --region"), ([], "give either SQL or one named question"),
                          (["select 1", "--top-regions"], "give either SQL"),
                          (["--false-alarms", "--region", "R01"], "false_alarms can be filtered on depot only"),
                          (["select 1", "--depot", "north"], "filter the named questions")):
        assert main(["query", "--store", store.root, *argv]) == 2
        assert message in capsys.readouterr().err
