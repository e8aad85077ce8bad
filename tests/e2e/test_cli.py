"""The `anodet` command line on tiny data: demo-data, train, predict, query, and clear errors."""

import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from anodet_core.demo_data import write_pair_folders
from anodet_core.registry import model_store
from anodet_core.scoring.calibration import TEMPERATURES
from anodet_core.store.layout import Store
from flows.cli import build_parser, main


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cli-store"))
    rc = main(["--store", root, "demo-data", "--nights", "3", "--trains", "1", "--cars", "1", "--regions", "4",
               "--width", "320", "--height", "200", "--seed", "5"])
    assert rc == 0
    return root


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ["demo", "demo-data", "train", "run-night", "backfill", "predict", "query", "evaluate", "serve", "bench"]:
        assert cmd in out


def test_demo_data_writes_a_consistent_depot(tiny_store):
    store = Store(tiny_store)
    assert store.nights("demo") == ["2026-11-16", "2026-11-17", "2026-11-18"]
    man = store.read_manifest("demo", "2026-11-17")
    assert len(man) == 4 and (man.width == 320).all() and (man.height == 200).all()


def test_train_saves_an_immutable_version_and_promotes_it_only_over_a_worse_production(tiny_store, capsys):
    args = ["--store", tiny_store, "train", "--init", "none", "--epochs", "1", "--seed", "1", "--overrides", '{"depth": 0}']
    assert main(args) == 0
    store = Store(tiny_store)
    assert model_store.list_versions(store, "anodfdnet") == ["1"]
    # with no promoted version the shipped base is the production to beat, as in retrain and the demo
    promo = model_store.resolve_card(store, "anodfdnet:1").extra["promotion"]
    assert promo["production_version"] == "base" and promo["production_value"] is not None
    assert promo["promoted"] == (promo["candidate_value"] >= promo["production_value"] + promo["margin"])
    assert model_store.get_alias(store, "anodfdnet") == ("1" if promo["promoted"] else None)
    assert main([*args, "--promote"]) == 0  # the user's request: version 2 is production
    assert model_store.get_alias(store, "anodfdnet") == "2"
    card = json.loads(store.read_text(store.model_version_rel("anodfdnet", "1") + "/card.json"))
    # the overrides, plus the map temperature when calibration chose one (anodet_core.scoring.calibration)
    assert card["preset"] == "lite" and {k: v for k, v in card["config"].items() if k != "map_temperature"} == {"depth": 0}
    assert card["config"].get("map_temperature", 1.0) in TEMPERATURES
    assert card["eval_split"] == "demo:2026-11-18" and {"f1", "iou", "precision", "recall", "auc"} <= set(card["metrics"])
    assert len(card["data_fingerprint"]) == 16
    # the operating point is the one calibrated on validation, and moved off 0.5 only for a clear F1 gain there
    # (which threshold maximises F1 is checked against a brute-force oracle in tests/unit/scoring/test_thresholds.py)
    cal = card["extra"]["calibration"]
    assert (card["threshold"], card["min_finding_area"]) == (cal["threshold"], cal["min_finding_area"])
    assert cal["n_val"] == card["extra"]["n_val"] >= 1
    assert card["threshold"] == 0.5 or (0.25 <= card["threshold"] <= 0.75 and cal["pixel_f1"] > cal["pixel_f1_at_05"] + 0.02)
    assert main(args) == 0  # the same recipe again is not better than production by the margin: not promoted
    assert model_store.list_versions(store, "anodfdnet") == ["1", "2", "3"]
    assert model_store.get_alias(store, "anodfdnet") == "2"
    model, loaded = model_store.load(store, "anodfdnet:3")
    assert loaded.version == "3" and sum(p.numel() for p in model.parameters()) > 0
    assert "saved anodfdnet:3 (not promoted)" in capsys.readouterr().out


def test_train_never_promotes_a_candidate_worse_than_production_without_promote(tmp_path, monkeypatch, capsys):
    """``train`` with a production version compares both on the candidate's test split (the retrain rule)."""
    from anodet_core.registry import retraining

    root = str(tmp_path)
    assert main(["--store", root, "demo-data", "--nights", "2", "--trains", "1", "--cars", "1", "--regions", "4",
                 "--width", "320", "--height", "200", "--seed", "6"]) == 0
    args = ["--store", root, "train", "--init", "none", "--epochs", "1", "--steps", "1", "--overrides", '{"depth": 0}']
    store = Store(root)
    assert main([*args, "--promote"]) == 0 and model_store.get_alias(store, "anodfdnet") == "1"
    assert "saved anodfdnet:1 (production)" in capsys.readouterr().out
    real, shift, seen = retraining.evaluate_arrays, [1.0], []

    def production_shifted(model, test, device="cpu", **kw):  # production's real F1 on the split, moved by shift
        seen.append(len(test))
        m = real(model, test, device, **kw)
        return {**m, "f1": m["f1"] + shift[0]}

    monkeypatch.setattr(retraining, "evaluate_arrays", production_shifted)
    assert main(args) == 0  # worse than production: kept, not promoted
    assert model_store.get_alias(store, "anodfdnet") == "1" and seen and seen[0] > 0
    out = capsys.readouterr().out
    assert "saved anodfdnet:2 (not promoted)" in out and "is not better than production" in out
    promo = model_store.resolve_card(store, "anodfdnet:2").extra["promotion"]
    assert (promo["promoted"], promo["production_version"], promo["eval_split"]) == (False, "1", "demo:2026-11-17")
    assert promo["production_value"] > promo["candidate_value"]
    assert main([*args, "--promote"]) == 0  # the user's explicit request overrides the rule, and says so
    assert model_store.get_alias(store, "anodfdnet") == "3"
    assert "saved anodfdnet:3 (production)" in (out := capsys.readouterr().out) and "on request (--promote)" in out
    shift[0] = -1.0
    assert main(args) == 0  # better than production by more than the margin: promoted without --promote
    assert model_store.get_alias(store, "anodfdnet") == "4"
    assert "saved anodfdnet:4 (production)" in (out := capsys.readouterr().out) and "beats production" in out


def test_predict_writes_maps_and_scores_and_reports_bad_folders(tiny_store, tmp_path):
    pairs = tmp_path / "pairs"
    ids = write_pair_folders(str(pairs), 3, seed=2, width=200, height=120)
    os.makedirs(pairs / "zz-broken")
    (pairs / "zz-broken" / "cur.jpg").write_bytes(b"not an image")
    (pairs / "zz-broken" / "his.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert main(["--store", tiny_store, "predict", "--model", "anodfdnet", "--pairs", str(pairs), "--out", str(out)]) == 0
    scores = pd.read_parquet(out / "scores.parquet")
    assert scores.pair_id.tolist() == [*ids, "zz-broken"]
    bad = scores.set_index("pair_id").loc["zz-broken"]
    assert bad.status == "error" and "decode" in bad.error
    for pid in ids:
        png = np.asarray(Image.open(out / f"{pid}.png"))
        assert png.shape == (120, 200) and png.dtype == np.uint8
        row = scores.set_index("pair_id").loc[pid]
        assert row.score_max == pytest.approx(png.max() / 255, abs=1 / 255)
        assert row.model == f"anodfdnet:{model_store.get_alias(Store(tiny_store), 'anodfdnet') or 'base'}"  # production


def test_query_and_errors(tiny_store, capsys):
    assert main(["--store", tiny_store, "query", "select count(*) as n from captures", "--format", "csv"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == ["n", "0"]  # no night has run in this store
    assert main(["--store", tiny_store, "query", "select * from nowhere"]) == 2
    assert "query failed" in capsys.readouterr().err
    assert main(["--store", tiny_store, "run-night", "--depot", "demo", "--night", "2030-01-01"]) == 2
    assert "no manifest" in capsys.readouterr().err
    assert main(["--store", tiny_store, "run-night", "--depot", "demo", "--night", "31-12-2030"]) == 2
    assert "YYYY-MM-DD" in capsys.readouterr().err
    assert main(["--store", tiny_store, "predict", "--model", "nosuch", "--pairs", ".", "--out", "x"]) == 2
    assert "no production version" in capsys.readouterr().err


def test_evaluate_json_on_a_paired_folder(tiny_store, tmp_path, capsys):
    data = tmp_path / "pairs"
    write_pair_folders(str(data / "test"), 4, seed=4, width=200, height=120, anomaly_rate=0.5)
    write_pair_folders(str(data / "train"), 2, seed=5, width=200, height=120)
    assert main(["--store", tiny_store, "evaluate", "--model", "anodfdnet:1", "--data", str(data), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # one JSON object, nothing else on stdout
    res = json.loads(out[0])
    assert list(res) == ["precision", "recall", "oa", "f1", "iou", "auc", "eer", "image_auroc", "precision_at_op",
                         "recall_at_op", "f1_at_op", "iou_at_op", "threshold", "min_area", "decision_precision",
                         "decision_recall", "false_alarms", "precision_covered", "recall_covered", "f1_covered",
                         "iou_covered", "auc_covered", "uncovered_frac", "uncovered_anomalous_frac", "n_scored",
                         "n_skipped", "skipped"]
    assert (res["n_scored"], res["n_skipped"], res["skipped"]) == (4, 0, [])
    assert isinstance(res["min_area"], int) and res["min_area"] >= 1 and isinstance(res["false_alarms"], int)
    assert 0 <= res["false_alarms"] <= 4
    assert all(v is None or 0.0 <= v <= 1.0 for k, v in res.items() if k not in ("min_area", "false_alarms", "n_scored", "n_skipped", "skipped"))
    assert main(["--store", tiny_store, "evaluate", "--model", "anodfdnet:1", "--data", str(data)]) == 0
    table = capsys.readouterr().out
    assert "pairs: 4 scored" in table and "| precision |" in table
    assert main(["--store", tiny_store, "evaluate", "--model", "anodfdnet:1", "--data", str(tmp_path / "none")]) == 2


def test_evaluate_plots_writes_decodable_curves_linked_from_its_report(tiny_store, tmp_path, capsys):
    from PIL import Image

    data, plots = tmp_path / "pairs", tmp_path / "plots"
    write_pair_folders(str(data), 4, seed=4, width=200, height=120, anomaly_rate=0.5)
    assert main(["--store", tiny_store, "evaluate", "--model", "anodfdnet:1", "--data", str(data), "--json",
                 "--plots", str(plots)]) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)  # stdout is still the one JSON object; the paths go to stderr
    assert sorted(p.name for p in plots.iterdir()) == ["evaluate.md", "image_roc_pr.png", "pixel_roc_pr.png"]
    assert f"wrote {plots / 'evaluate.md'}" in captured.err
    for name in ("image_roc_pr.png", "pixel_roc_pr.png"):
        with Image.open(plots / name) as im:
            im.load()
            assert im.width > 400 and im.height > 200
    report = (plots / "evaluate.md").read_text()
    assert "![image_roc_pr](image_roc_pr.png)" in report and "![pixel_roc_pr](pixel_roc_pr.png)" in report
    assert "| precision |" in report and "pairs: 4 scored" in report


def test_ephemeral_runs_share_one_api_server_with_local_workers_and_drop_heartbeats(monkeypatch):
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from anodet_core.config import Settings
    from flows.runners import ephemeral_run_settings

    started = []
    monkeypatch.setattr(SubprocessASGIServer, "start", lambda self, timeout=None: started.append(self.api_url))
    local, remote = Settings(), Settings(dask_address="tcp://dask-scheduler.depot:8786")
    with temporary_settings(restore_defaults={PREFECT_API_URL}):  # no server configured: ephemeral mode
        shared = ephemeral_run_settings(local)
        assert shared == {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None, PREFECT_API_URL: started[0]}
        assert ephemeral_run_settings(Settings(dask_address="tcp://127.0.0.1:8786"))[PREFECT_API_URL] == started[0]
        # workers on other hosts cannot reach this host's loopback server: they keep their own
        assert ephemeral_run_settings(remote) == {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
        with temporary_settings(updates=shared):
            from prefect.settings import get_current_settings

            assert get_current_settings().flows.heartbeat_frequency is None
            assert get_current_settings().api.url == started[0]
    with temporary_settings(updates={PREFECT_API_URL: "http://prefect.depot:4200/api"}):
        assert ephemeral_run_settings(local) == ephemeral_run_settings(remote) == {}
    assert len(started) == 2


def test_cli_single_image_choices_are_the_registry_s():
    # the parser keeps its own tuple so `anodet --help` does not import torch; it must match the registry's list
    from anodet_core.models import single_image_models
    from flows.cli._common import SINGLE_IMAGE_ARCHS

    assert sorted(SINGLE_IMAGE_ARCHS) == single_image_models()
