"""Single-image unsupervised models through the CLI: `anodet train --model csaflow|anovit --normal-dir` and
`anodet evaluate --normal-dir --anomalous-dir [--mask-dir] [--json]`, plus the scoring API."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the network

import json  # noqa: E402
import shutil  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from anodet_core.demo_data import write_pair_folders  # noqa: E402
from anodet_core.registry import model_store  # noqa: E402
from anodet_core.single_image import (  # noqa: E402
    calibrate,
    load_images,
    load_masks,
    score_images,
    train_single_image,
)
from anodet_core.store.layout import Store  # noqa: E402
from flows.cli import main  # noqa: E402

SIZE = 128
# tiny but real: ImageNet Lite0 features (packaged weights), narrow flow; AnoViT lite (on Lite0 features) with 2 layers
TINY = {
    "csaflow": {"input_size": SIZE, "hidden_channels": 16},
    "anovit": {"depth": 2, "img_size": SIZE},
    "patchcore": {"input_size": SIZE},  # the reference baselines: fitted in one pass, no epochs
    "padim": {"input_size": SIZE},
}
ARCHS = tuple(TINY)
MEMORY = ("patchcore", "padim")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """train/ : 12 normal images; normal/ : 8 other normal images; anomalous/ + masks/ : anomalous cur images."""
    root = tmp_path_factory.mktemp("single-image")
    pairs = root / "pairs"
    ids = write_pair_folders(str(pairs), 20, seed=7, width=192, height=128, anomaly_rate=0.5)
    dirs = {k: root / k for k in ("train", "normal", "anomalous", "masks", "empty")}
    for d in dirs.values():
        d.mkdir()
    for i, pid in enumerate(ids):
        shutil.copy(pairs / pid / "his.jpg", dirs["train" if i < 12 else "normal"] / f"{pid}.jpg")
        if np.asarray(Image.open(pairs / pid / "mask.png")).any():
            shutil.copy(pairs / pid / "cur.jpg", dirs["anomalous"] / f"{pid}.jpg")
            shutil.copy(pairs / pid / "mask.png", dirs["masks"] / f"{pid}.png")
    (dirs["empty"] / "notes.txt").write_text("not an image")
    assert len(os.listdir(dirs["anomalous"])) >= 3
    return {k: str(v) for k, v in dirs.items()}


@pytest.fixture(scope="module")
def store(data, tmp_path_factory):
    """One store with every single-image model trained through the CLI (3 epochs on 12 normal images)."""
    root = str(tmp_path_factory.mktemp("si-store"))
    for arch in ARCHS:
        rc = main(["--store", root, "train", "--model", arch, "--normal-dir", data["train"], "--epochs", "3",
                   "--seed", "0", "--overrides", json.dumps(TINY[arch]), "--device", "cpu"])
        assert rc == 0
    return root


@pytest.mark.parametrize("arch", ARCHS)
def test_train_saves_a_calibrated_production_version(store, arch, data):
    st = Store(store)
    assert model_store.list_versions(st, arch) == ["1"]  # --name defaults to the arch
    assert model_store.get_alias(st, arch) == "1"
    model, card = model_store.load(st, arch)
    assert card.arch == arch and card.preset == "lite" and card.config == TINY[arch]
    x = card.extra
    assert x["kind"] == "single_image" and x["input_size"] == SIZE and x["n_train"] == 10 and x["n_val"] == 2
    assert x["normal_score_min"] <= card.threshold <= x["normal_score_max"]  # 99th percentile of 2 held-out scores
    assert x["normal_score_std"] >= 0 and np.isfinite(x["normal_map_p999"]) and x["epochs_run"] == (1 if arch in MEMORY else 3)
    assert len(card.data_fingerprint) == 16
    # the card's threshold is the quantile of the held-out normal scores of the rebuilt model
    imgs, _ = load_images(data["train"], SIZE)
    from anodet_core.single_image import _split

    _, val = _split(len(imgs), 0.2, 0)
    scores, _ = score_images(model, imgs[val], maps=False)
    assert card.threshold == pytest.approx(float(np.quantile(scores, 0.99)), rel=1e-5)


def test_train_prints_version_time_and_threshold(data, tmp_path, capsys):
    rc = main(["--store", str(tmp_path), "train", "--model", "csaflow", "--normal-dir", data["train"], "--epochs", "1",
               "--name", "flow", "--overrides", json.dumps(TINY["csaflow"]), "--device", "cpu"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "saved flow:1 (production)" in out and "threshold" in out and " s" in out
    assert model_store.get_alias(Store(str(tmp_path)), "flow") == "1"


def test_a_second_version_replaces_production_only_on_request(data, tmp_path, capsys):
    """Normal images only: no image AUROC to beat production with, so the rule keeps production unless --promote."""
    args = ["--store", str(tmp_path), "train", "--model", "csaflow", "--normal-dir", data["train"], "--epochs", "1",
            "--overrides", json.dumps(TINY["csaflow"]), "--device", "cpu"]
    st = Store(str(tmp_path))
    assert main(args) == 0 and model_store.get_alias(st, "csaflow") == "1"
    assert main(args) == 0 and model_store.get_alias(st, "csaflow") == "1"
    out = capsys.readouterr().out
    assert "saved csaflow:2 (not promoted)" in out and "candidate metric is undefined" in out
    promo = model_store.resolve_card(st, "csaflow:2").extra["promotion"]
    assert (promo["promoted"], promo["production_version"], promo["metric"]) == (False, "1", "image_auroc")
    assert main([*args, "--promote"]) == 0 and model_store.get_alias(st, "csaflow") == "3"
    assert "saved csaflow:3 (production)" in capsys.readouterr().out


@pytest.mark.parametrize("arch", ARCHS)
def test_evaluate_json_and_table(store, data, arch, capsys):
    base = ["--store", store, "evaluate", "--model", arch, "--normal-dir", data["normal"], "--anomalous-dir",
            data["anomalous"], "--device", "cpu"]
    assert main([*base, "--mask-dir", data["masks"], "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert set(res) == {"image_auroc", "recall", "pixel_auroc"}
    for k in res:
        assert res[k] is not None and 0.0 <= res[k] <= 1.0
    assert main([*base, "--json"]) == 0  # no masks: pixel AUROC is null
    res = json.loads(capsys.readouterr().out)
    assert res["pixel_auroc"] is None and 0.0 <= res["image_auroc"] <= 1.0
    assert main([*base, "--mask-dir", data["masks"]]) == 0
    out = capsys.readouterr().out
    assert f"model {arch}:1" in out and "| image_auroc | recall | pixel_auroc | false alarms |" in out
    plots = os.path.join(store, f"plots-{arch}")
    assert main([*base, "--plots", plots]) == 0
    assert sorted(os.listdir(plots)) == ["evaluate.md", "image_roc_pr.png"]  # single-image maps: no pixel curves
    with open(os.path.join(plots, "evaluate.md")) as f:
        assert "![image_roc_pr](image_roc_pr.png)" in f.read()


def _with_blob(imgs: np.ndarray) -> np.ndarray:
    """A big, bright, soft-edged disc (radius 22 % of the side) pasted at the centre."""
    h, w = imgs.shape[1:3]
    yy, xx = np.mgrid[:h, :w]
    d = np.hypot(yy - h / 2, xx - w / 2)
    alpha = np.clip((0.22 * h - d) / 3.0, 0.0, 1.0)[None, :, :, None]
    out = imgs * (1 - alpha) + np.array([255.0, 250.0, 235.0]) * alpha
    return out.round().astype(np.uint8)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_pasted_blob_scores_higher_than_the_clean_image(store, data, arch):
    model, _ = model_store.load(Store(store), arch)
    clean, _ = load_images(data["normal"], SIZE)
    s_clean, m_clean = score_images(model, clean)
    s_blob, m_blob = score_images(model, _with_blob(clean))
    assert (s_blob > s_clean).all(), (s_clean, s_blob)
    # and the map rises where the blob is, not elsewhere
    c = slice(SIZE // 2 - 12, SIZE // 2 + 12)
    assert (m_blob[:, c, c].mean(axis=(1, 2)) > m_clean[:, c, c].mean(axis=(1, 2))).all()


def test_training_is_seeded_and_masks_load_by_stem(data):
    imgs, names = load_images(data["train"], SIZE)
    assert imgs.shape == (12, SIZE, SIZE, 3) and imgs.dtype == np.uint8 and names == sorted(names)
    cfg = {"input_size": SIZE, "hidden_channels": 8}
    a, ha = train_single_image("csaflow", imgs[:4], overrides=cfg, epochs=1, batch_size=2, seed=3)
    b, hb = train_single_image("csaflow", imgs[:4], overrides=cfg, epochs=1, batch_size=2, seed=3)
    assert ha[0]["loss"] == hb[0]["loss"] and ha[0]["steps"] == 2
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    frozen = {k for k, p in a.named_parameters() if not p.requires_grad}
    assert frozen and all(k.startswith("backbone.") for k in frozen)
    _, anames = load_images(data["anomalous"], SIZE)
    masks = load_masks(data["masks"], anames, SIZE)
    assert masks.shape == (len(anames), SIZE, SIZE) and masks.any(axis=(1, 2)).all()
    with pytest.raises(ValueError, match="no mask"):
        load_masks(data["masks"], ["nosuch.jpg"], SIZE)
    thr, stats = calibrate(np.arange(101.0))
    assert thr == pytest.approx(99.0) and stats["normal_score_mean"] == pytest.approx(50.0)


def test_bad_input_is_a_clear_error(store, data, tmp_path, capsys):
    assert main(["--store", str(tmp_path), "train", "--model", "csaflow", "--normal-dir", data["empty"]]) == 2
    assert "no images" in capsys.readouterr().err
    assert main(["--store", str(tmp_path), "train", "--model", "anovit", "--normal-dir", str(tmp_path / "nosuch")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--store", str(tmp_path), "train", "--normal-dir", data["train"]]) == 2
    assert "needs --model" in capsys.readouterr().err
    assert main(["--store", store, "evaluate", "--model", "csaflow"]) == 2
    err = capsys.readouterr().err
    assert "--data" in err and "--normal-dir" in err
    assert main(["--store", store, "evaluate", "--model", "csaflow", "--normal-dir", data["normal"]]) == 2
    assert "--anomalous-dir" in capsys.readouterr().err


def test_calibration_with_a_few_labelled_anomalies(data, tmp_path, capsys):
    from anodet_core.single_image.fitting import calibrate_with_anomalies

    thr, figs = calibrate_with_anomalies(np.arange(10.0), np.array([5.0, 20.0, 30.0]))
    assert thr == 14.5 and figs == {"recall": 2 / 3, "false_alarm_rate": 0.0, "n_anomalous": 3}  # J 2/3 beats 1 - 1/2
    thr, figs = calibrate_with_anomalies(np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    assert thr == 2.5 and (figs["recall"], figs["false_alarm_rate"]) == (1.0, 0.0)
    with pytest.raises(ValueError, match="both normal and anomalous"):
        calibrate_with_anomalies(np.arange(3.0), np.array([]))
    rc = main(["--store", str(tmp_path), "train", "--model", "patchcore", "--normal-dir", data["train"],
               "--anomalous-dir", data["anomalous"], "--overrides", json.dumps(TINY["patchcore"]), "--device", "cpu"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "fitted in one pass" in out and "Youden" in out and "recall" in out
    card = model_store.resolve_card(Store(str(tmp_path)), "patchcore:1")
    assert "labelled anomalous" in card.extra["threshold_rule"]
    assert 0.0 <= card.metrics["val_recall"] <= 1.0


def test_feature_normalisation_standardises_the_training_features(data):
    imgs, _ = load_images(data["train"], SIZE)
    cfg = {"input_size": SIZE, "hidden_channels": 8, "normalise_features": True, "channel_attention": False,
           "self_attention": False}
    model, _ = train_single_image("csaflow", imgs[:6], overrides=cfg, epochs=1, batch_size=3, seed=0)
    from anodet_core.single_image import to_input

    with torch.no_grad():
        feats = model.backbone_features(to_input(imgs[:6], model))
        std = model.attend(feats)  # no attention here: only the standardisation
    for f, s in zip(feats, std):
        assert not torch.allclose(f, s)
        torch.testing.assert_close(s.mean(dim=(0, 2, 3)), torch.zeros(s.shape[1]), atol=1e-4, rtol=0)
        torch.testing.assert_close(s.std(dim=(0, 2, 3)), torch.ones(s.shape[1]), atol=1e-3, rtol=0)
    fresh = type(model)(model.cfg)
    fresh.load_state_dict(model.state_dict())  # the statistics travel with the weights
    assert torch.equal(fresh.feature_stats, model.feature_stats)
