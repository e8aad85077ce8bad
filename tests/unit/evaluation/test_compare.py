"""Method comparison (paper Tables I and III): same trainer for every method, shared test metrics, outputs, CLI."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from anodet_core.demo_data import write_pair_folders
from anodet_core.evaluation.compare import (
    MethodResult,
    folder_split,
    resolve_overrides,
    run_comparison,
    table_one_methods,
    table_three_methods,
    to_markdown,
    write_outputs,
)
from anodet_core.training import PairArrays, TrainConfig
from flows.cli import main

TINY = {
    "anodfdnet": dict(depth=0, widths=(8, 8, 8, 8), latent_dim=16, token_dim=16, num_heads=1, mlp_dim=16),
    "unet_cat": dict(widths=(4, 4, 4, 4, 4)),
    "fc_siam_diff": dict(widths=(4, 4, 4, 4)),
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _data(n, seed):
    rng = np.random.default_rng(seed)
    cur = rng.integers(0, 255, (n, 256, 256, 3), dtype=np.uint8)
    his = cur.copy()
    mask = np.zeros((n, 256, 256), np.uint8)
    for i in range(0, n, 2):  # every other pair has a bright square in cur
        y, x = rng.integers(20, 180, 2)
        cur[i, y : y + 40, x : x + 50] = 255
        mask[i, y : y + 40, x : x + 50] = 1
    return PairArrays([f"{seed}-{i}" for i in range(n)], cur, his, mask, [])


@pytest.fixture(scope="module")
def table_one():
    train, test = _data(8, 0), _data(4, 1)
    methods = resolve_overrides(table_one_methods(), TINY)
    cfg = TrainConfig(epochs=1, batch_size=4, seed=3)
    return run_comparison(train, test, methods, "lite", cfg), test


def test_one_row_per_method_with_metrics_on_every_test_pixel(table_one):
    results, test = table_one
    assert [r.name for r in results] == ["AnoDFDNet", "Unet-cat", "FC-Siam-diff"]
    assert [r.arch for r in results] == ["anodfdnet", "unet_cat", "fc_siam_diff"]
    for r in results:
        assert isinstance(r, MethodResult) and r.preset == "lite" and r.overrides == TINY[r.arch]
        m = r.metrics
        assert m["tp"] + m["fp"] + m["tn"] + m["fn"] == test.mask.size  # summed over all test pixels at 256x256
        assert m["tp"] + m["fn"] == int(test.mask.sum())
        for k in ("precision", "recall", "oa", "f1", "iou", "auc"):
            assert 0.0 <= m[k] <= 1.0, (r.name, k, m[k])
        assert r.params > 0 and r.epochs == 1 and r.train_seconds > 0
        assert r.seconds_per_epoch == pytest.approx(r.train_seconds / r.epochs)
        fpr, tpr = r.roc
        assert len(fpr) == len(tpr) > 2 and fpr[0] == 0 and tpr[-1] == 1
    assert len({r.params for r in results}) == 3  # really three different networks


def test_markdown_csv_and_roc_outputs_agree(table_one, tmp_path):
    results, _ = table_one
    md = to_markdown(results, "Table I")
    lines = md.strip().splitlines()
    assert lines[0] == "### Table I"
    assert "| Method | Pre | Re | OA | F1 | IoU | AUC | params | s/epoch |" in lines
    rows = [ln for ln in lines if ln.startswith("| ") and not ln.startswith("| Method")]
    assert [ln.split("|")[1].strip() for ln in rows] == [r.name for r in results]
    paths = write_outputs(results, str(tmp_path / "out"), "table1")
    assert set(paths) == {"markdown", "csv", "roc"}
    assert paths["markdown"].endswith("table1.md") and paths["csv"].endswith("table1.csv") and paths["roc"].endswith("table1_roc.png")
    assert open(paths["markdown"]).read() == to_markdown(results, "table1")
    df = pd.read_csv(paths["csv"])
    assert list(df["method"]) == [r.name for r in results]
    for r, row in zip(results, df.itertuples()):
        for k in ("precision", "recall", "oa", "f1", "iou", "auc"):
            assert getattr(row, k) == pytest.approx(r.metrics[k], abs=1e-12)
        assert row.params == r.params and row.tp == r.metrics["tp"] and row.epochs == r.epochs
        assert json.loads(row.overrides) == json.loads(json.dumps(r.overrides))
    with open(paths["roc"], "rb") as fh:
        assert fh.read(8) == PNG_MAGIC
    assert os.path.getsize(paths["roc"]) > 1000


def test_layers_variant_has_one_row_per_depth():
    methods = resolve_overrides(table_three_methods([0, 1]), TINY["anodfdnet"])
    assert [m[2]["depth"] for m in methods] == [0, 1]  # the row's depth wins over the shared overrides
    res = run_comparison(_data(6, 0), _data(2, 1), methods, "lite", TrainConfig(epochs=1, batch_size=4))
    assert [r.name for r in res] == ["AnoDFDNet L=0", "AnoDFDNet L=1"]
    assert res[1].params > res[0].params  # the Transformer layer adds weights
    md = to_markdown(res, "Table III")
    assert "| AnoDFDNet L=0 |" in md and "| AnoDFDNet L=1 |" in md


def test_folder_split_without_train_test_is_a_seeded_80_20_split(tmp_path):
    root = str(tmp_path / "flat")
    write_pair_folders(root, 10, seed=2, width=160, height=100)
    tr, te, note, _ = folder_split(root, seed=4)
    assert len(tr) == 8 and len(te) == 2 and not {p.key for p in tr} & {p.key for p in te}
    assert "80/20" in note
    assert [p.key for p in folder_split(root, seed=4)[1]] == [p.key for p in te]


def test_cli_compare_on_a_folder_dataset(tmp_path, capsys):
    data = tmp_path / "pairs"
    write_pair_folders(str(data / "train"), 6, seed=1, width=160, height=100)
    write_pair_folders(str(data / "test"), 3, seed=2, width=160, height=100)
    out = tmp_path / "cmp"
    rc = main(["compare", "--data", str(data), "--epochs", "1", "--lr", "1e-3", "--out", str(out),
               "--overrides", json.dumps(TINY)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "6 train/ pairs, 3 test/ pairs" in text
    assert "| Method | Pre | Re | OA | F1 | IoU | AUC | params | s/epoch |" in text
    for name in ("AnoDFDNet", "Unet-cat", "FC-Siam-diff", "Classical (registration + normalised smoothed difference)"):
        assert f"| {name} |" in text
    for f in ("table1_methods.md", "table1_methods.csv", "table1_methods_roc.png"):
        assert (out / f).exists() and str(out / f) in text
    table = pd.read_csv(out / "table1_methods.csv")
    assert len(table) == 4  # three networks and the classical baseline, on the same test pairs


def test_cli_compare_needs_a_data_source(capsys):
    assert main(["compare", "--epochs", "1"]) == 2  # a bad argument: exit status 2 with the reason
    assert "--data DIR or --depot" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # and the two sources stay exclusive
        main(["compare", "--data", "x", "--depot", "y"])
