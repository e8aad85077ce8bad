"""The project's single-image benchmark (MVTec layout from offline photographs) and `anodet compare --single-image`."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from anodet_core.single_image.benchmark import make_benchmark
from flows.cli import main


def _png(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sibench"))
    info = make_benchmark(root, categories=("gravel", "coffee"), n_train=5, n_good=3, n_defect=3, size=128, seed=1)
    return root, info


def test_layout_counts_and_masks(bench):
    root, info = bench
    assert info["categories"] == ["gravel", "coffee"] and info["textures"] == ["gravel"]
    with open(os.path.join(root, "benchmark.json")) as f:
        assert json.load(f) == info
    for cat in ("gravel", "coffee"):
        d = os.path.join(root, cat)
        assert sorted(os.listdir(os.path.join(d, "train", "good"))) == [f"{i:03d}.png" for i in range(5)]
        assert len(os.listdir(os.path.join(d, "test", "good"))) == 3
        defects = sorted(os.listdir(os.path.join(d, "test", "defect")))
        assert defects == sorted(os.listdir(os.path.join(d, "ground_truth", "defect"))) and len(defects) == 3
        for name in defects:
            img = _png(os.path.join(d, "test", "defect", name))
            mask = _png(os.path.join(d, "ground_truth", "defect", name)) > 127
            assert img.shape == (128, 128, 3) and mask.shape == (128, 128)
            assert 0 < mask.mean() < 0.5  # one change, labelled, never the whole view
        views = [_png(os.path.join(d, "train", "good", f"{i:03d}.png")).astype(int) for i in range(2)]
        assert np.abs(views[0] - views[1]).mean() > 1  # every view is its own pose and light


def test_seeded(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        make_benchmark(str(d), categories=("coffee",), n_train=2, n_good=1, n_defect=2, size=128, seed=1)
    for sub in ("train/good/001.png", "test/defect/001.png", "ground_truth/defect/001.png"):
        assert np.array_equal(_png(str(a / "coffee" / sub)), _png(str(b / "coffee" / sub)))
    make_benchmark(str(tmp_path / "c"), categories=("coffee",), n_train=2, n_good=1, n_defect=2, size=128, seed=2)
    assert not np.array_equal(_png(str(a / "coffee/test/defect/001.png")),
                              _png(str(tmp_path / "c/coffee/test/defect/001.png")))


def test_unknown_category_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown categories"):
        make_benchmark(str(tmp_path), categories=("lena",))


def test_compare_single_image_tabulates_every_method_and_category(bench, tmp_path, capsys):
    root, _ = bench
    out = tmp_path / "cmp"
    over = json.dumps({"patchcore": {"input_size": 128}, "padim": {"input_size": 128}})
    assert main(["--store", str(tmp_path / "store"), "compare", "--single-image", "--data", root, "--methods",
                 "patchcore", "padim", "--overrides", over, "--out", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "| patchcore |" in text and "| padim |" in text and "| image AUROC | coffee | gravel |" in text
    rows = json.loads((out / "single_image.json").read_text())
    assert [(r["method"], r["category"]) for r in rows] == [
        ("patchcore", "coffee"), ("patchcore", "gravel"), ("patchcore", "mean"),
        ("padim", "coffee"), ("padim", "gravel"), ("padim", "mean")]
    for r in rows:
        assert 0.0 <= r["image_auroc"] <= 1.0 and 0.0 <= r["pixel_auroc"] <= 1.0 and r["fit_seconds"] > 0
    mean = rows[2]
    assert mean["image_auroc"] == pytest.approx((rows[0]["image_auroc"] + rows[1]["image_auroc"]) / 2)
    assert (out / "single_image.md").read_text().startswith("| method | image AUROC |")


def test_compare_single_image_bad_arguments(bench, tmp_path, capsys):
    root, _ = bench
    base = ["--store", str(tmp_path), "compare", "--single-image", "--data", root]
    assert main([*base, "--methods", "nosuch"]) == 2
    assert "unknown single-image model" in capsys.readouterr().err
    assert main([*base, "--overrides", '{"input_size": 128}']) == 2
    assert "one object per model" in capsys.readouterr().err
    assert main(["--store", str(tmp_path), "compare"]) == 2
    assert "--data DIR or --depot" in capsys.readouterr().err
