"""Pretraining corpus, calibration, the classical baseline and a small-budget `anodet pretrain`."""

import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from anodet_core.models import create_model
from anodet_core.models.classical_diff import fit_offset
from anodet_core.pretraining.sources import Photo, load_photos, split_photos
from anodet_core.pretraining.synth import synth_pair
from anodet_core.scoring.calibration import calibrate
from anodet_core.training import PairArrays


def _photo(seed: int, h: int = 300, w: int = 400) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h // 10, w // 10, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC))


def _decode(b: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(b)).convert("RGB")).astype(np.float32)


def test_synth_pair_labels_exactly_the_visible_changes():
    photo, donors = _photo(0), [_photo(1), _photo(2)]
    changed = normal = 0
    for seed in range(12):
        p = synth_pair(photo, donors, np.random.default_rng(seed))
        cur = _decode(p.cur_jpeg)
        assert p.mask.shape == cur.shape[:2] == (384, 512)
        assert bool(p.mask.any()) == bool(p.kinds), (seed, p.kinds)
        changed += bool(p.kinds)
        normal += not p.kinds
    assert changed >= 4 and normal >= 1
    # no viewpoint or photometric nuisance: the difference sits on the label
    for seed in range(30):
        p = synth_pair(photo, donors, np.random.default_rng(seed), jitter=0.0, p_change=1.0)
        if not p.kinds:
            continue
        d = np.abs(_decode(p.cur_jpeg) - np.asarray(Image.open(io.BytesIO(p.his_jpeg)).convert("RGB").resize((512, 384)),
                                                   np.float32)).mean(2)
        assert d[p.mask].mean() > 2 * d[~p.mask].mean(), (seed, p.kinds)
        break


def test_split_is_by_photo_group_and_only_photographs_are_held_out():
    photos = [Photo(f"skimage:p{i}", _photo(i, 64, 64)) for i in range(20)]
    photos += [Photo("file:mate/abstract/Elephants.jpg", _photo(30, 64, 64)),
               Photo("file:mate/abstract/Elephants_3840x2160.jpg", _photo(31, 64, 64)),
               Photo("file:mate/nature/Wood.jpg", _photo(32, 64, 64))]
    train, test = split_photos(photos, 0.3)
    assert {p.name for p in train} | {p.name for p in test} == {p.name for p in photos}
    assert not {p.group for p in train} & {p.group for p in test}
    assert all(p.is_photograph for p in test)
    assert photos[20].group == photos[21].group
    with pytest.raises(ValueError, match="reserved"):
        load_photos(["/usr/share/doc/opencv-doc/examples"], skimage=False, matplotlib=False)


def _arrays(n: int, blob: int, noise: int, seed: int = 0) -> PairArrays:
    """Pairs where anomalous ones (odd index) have a blob x blob change, every pair a noise x noise speck."""
    rng = np.random.default_rng(seed)
    cur = rng.integers(90, 110, (n, 256, 256, 3), dtype=np.uint8)
    his = cur.copy()
    mask = np.zeros((n, 256, 256), np.uint8)
    for i in range(n):
        y, x = rng.integers(10, 200, 2)
        cur[i, y : y + noise, x : x + noise] = 250  # speck: unlabelled nuisance
        if i % 2:
            y, x = rng.integers(10, 200, 2)
            cur[i, y : y + blob, x : x + blob] = 250
            mask[i, y : y + blob, x : x + blob] = 1
    return PairArrays([str(i) for i in range(n)], cur, his, mask, sizes=[(512, 512)] * n)


class _AbsDiff(torch.nn.Module):
    def forward(self, cur, his):
        return ((cur - his).abs().mean(1, keepdim=True) > 0.5).float() * 0.9


def test_calibration_picks_a_min_area_that_ignores_specks_and_converts_to_native_px():
    val = _arrays(16, blob=12, noise=2)
    cal = calibrate(_AbsDiff(), val)
    assert cal.decision_f1 == 1.0
    assert 4 < cal.min_area_model_px <= 144
    assert cal.min_finding_area == cal.min_area_model_px * 4  # 512^2 native over 256^2 model px
    specks_only = calibrate(_AbsDiff(), _arrays(16, blob=12, noise=1))
    assert specks_only.min_area_model_px < cal.min_area_model_px or cal.min_area_model_px <= 8


def test_classical_baseline_fits_its_level_on_validation():
    data = _arrays(8, blob=20, noise=0)
    model = create_model("classical_diff")
    level = fit_offset(model, data.cur, data.his, data.mask)
    assert level > 0
    from anodet_core.training import evaluate_arrays

    assert evaluate_arrays(model, data)["f1"] > 0.8
    # the fitted level is part of the state: a reload scores the same
    again = create_model("classical_diff")
    again.load_state_dict(model.state_dict())
    assert float(again.offset) == pytest.approx(level)


def test_base_preset_is_the_documented_architecture():
    m = create_model("anodfdnet", preset="base", pretrained=False)
    assert m.encoder.channels == [16, 24, 40, 112] and m.encoder.reductions == [2, 4, 8, 16]
    cur, his = torch.rand(2, 3, 128, 96) * 2 - 1, torch.rand(2, 3, 128, 96) * 2 - 1
    m.eval()
    with torch.no_grad():
        out = m(cur, his)
        assert out.shape == (2, 1, 128, 96)
        assert torch.allclose(out, m(his, cur), atol=1e-5)  # symmetric in (cur, his)
    m.train()
    assert all(not b.training for b in m.encoder.modules() if isinstance(b, torch.nn.BatchNorm2d))
    frozen = [p for p in m.encoder.body.conv_stem.parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)


@pytest.mark.slow
def test_pretrain_small_budget_registers_a_calibrated_evaluated_version(tmp_path):
    from flows.cli import main

    corpus, store = tmp_path / "corpus", tmp_path / "store"
    rc = main(["pretrain", "--corpus", str(corpus), "--store", str(store), "--photo-dirs", "--train-per-photo", "2",
               "--test-per-photo", "1", "--steps", "3", "--batch", "4", "--crop", "64", "--device", "cpu"])
    assert rc == 0
    rec = json.loads((corpus / "corpus.json").read_text())
    assert rec["n_test"] >= 1 and not set(rec["train_photos"]) & set(rec["test_photos"])
    card = json.loads((store / "models" / "anodfdnet" / "versions" / "1" / "card.json").read_text())
    assert card["preset"] == "base" and card["data_fingerprint"] == rec["fingerprint"]
    assert card["extra"]["steps"] == 3 and card["min_finding_area"] >= 1
    assert {"f1", "iou", "auc", "f1_at_op", "image_auroc"} <= set(card["metrics"])
    assert "held-out photographs" in card["eval_split"]
    # resumable: the checkpoint of the finished run is there, and a rerun does not train again
    assert any(f.startswith("checkpoint-") for f in os.listdir(corpus))
    # a second stage continues the first from its exported folder: same preset, steps added up, provenance kept
    stage1 = tmp_path / "stage1"
    rc = main(["pretrain", "--corpus", str(corpus), "--store", str(store), "--steps", "3", "--batch", "4", "--crop",
               "64", "--device", "cpu", "--no-test", "--export", str(stage1)])
    assert rc == 0 and (stage1 / "weights.safetensors").exists()
    rc = main(["pretrain", "--corpus", str(corpus), "--store", str(store), "--init", str(stage1), "--steps", "2",
               "--batch", "4", "--crop", "64", "--device", "cpu", "--no-test"])
    assert rc == 0
    versions = sorted(int(v) for v in os.listdir(store / "models" / "anodfdnet" / "versions"))
    card2 = json.loads((store / "models" / "anodfdnet" / "versions" / str(versions[-1]) / "card.json").read_text())
    assert card2["extra"]["steps"] == 2 and card2["extra"]["steps_total"] == 5
    assert card2["extra"]["init"]["ref"] == str(stage1) and card2["extra"]["init"]["steps_total"] == 3
    # --recalibrate trains nothing: the same tensors get a new operating point (map temperature included)
    rc = main(["pretrain", "--corpus", str(corpus), "--store", str(store), "--init", str(stage1), "--recalibrate",
               "--device", "cpu", "--no-test"])
    assert rc == 0
    last = store / "models" / "anodfdnet" / "versions" / str(max(int(v) for v in os.listdir(store / "models" / "anodfdnet" / "versions")))
    card3 = json.loads((last / "card.json").read_text())
    from safetensors.torch import load_file
    a, b = load_file(str(stage1 / "weights.safetensors")), load_file(str(last / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert card3["extra"]["recalibrated"]["ref"] == str(stage1) and card3["extra"]["steps"] == 3
    assert card3["config"].get("map_temperature", 1.0) in (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def test_a_kde_wallpaper_package_gives_its_largest_size_only(tmp_path):
    """plasma-workspace-wallpapers holds each picture at many sizes beside a screenshot and a dark variant: one
    photograph each, or the split would count one picture many times."""
    for rel, (w, h) in {"Kite/contents/images/640x480.jpg": (64, 48), "Kite/contents/images/2560x1600.jpg": (320, 200),
                        "Kite/contents/images_dark/2560x1600.jpg": (320, 200), "Kite/contents/screenshot.jpg": (300, 300),
                        "plain.png": (300, 300), "shot.webp": (300, 300), "notes.txt": (0, 0)}.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".txt"):
            path.write_text("not an image")
        else:
            Image.fromarray(_photo(len(rel), h, w)).save(path)
    photos = load_photos([str(tmp_path)], skimage=False, matplotlib=False, min_side=32)
    assert [p.name for p in photos] == ["file:Kite/contents/images/2560x1600.jpg", "file:plain.png", "file:shot.webp"]
    assert photos[0].pixels.shape[:2] == (200, 320)
    assert photos[0].group == "file:Kite"


def test_prepared_splits_are_cached_per_preparation_code(tmp_path, monkeypatch):
    """A cached split is reused only by the code that prepared it: the last one made before the history faded
    into the fill would have calibrated the shipped card on hard edges."""
    from anodet_core.imaging.io import encode_png
    from anodet_core.pretraining import pretrain as pt

    from helpers import jpeg

    (tmp_path / "corpus.json").write_text(json.dumps({"fingerprint": "f00d"}))
    world = _photo(5, 240, 360)
    for i in range(2):
        d = tmp_path / "test" / f"p-{i}"
        d.mkdir(parents=True)
        (d / "cur.jpg").write_bytes(jpeg(world[:, 40:]))  # his sees 40 px further left: cur's right edge has none
        (d / "his.jpg").write_bytes(jpeg(world[:, :320]))
        (d / "mask.png").write_bytes(encode_png(np.zeros((240, 320), np.uint8)))
    calls = []
    real = pt.prepare_arrays
    monkeypatch.setattr(pt, "prepare_arrays", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = pt.load_split(str(tmp_path), "test")
    again = pt.load_split(str(tmp_path), "test")
    assert len(calls) == 1 and np.array_equal(first.his, again.his)
    assert again.history_weight is not None and np.array_equal(first.history_weight, again.history_weight)
    assert (again.history_weight[:, :, -4:] == 0).all() and (again.history_weight[:, :, :200] == 255).all()
    monkeypatch.setattr(pt, "_preparation_code", lambda: "other-code")
    pt.load_split(str(tmp_path), "test")
    assert len(calls) == 2  # another preparation: prepared again, not read from the old cache


def test_calibration_searches_the_same_capture_fractions_at_a_larger_side():
    """Specks of 5 x 5 px at 256 are nuisance; at 512 the same specks are 10 x 10 = 100 px, above every unscaled
    candidate area (at most 64), so without scaling the minimum area could not keep ignoring them as it does at 256."""
    small = _arrays(16, blob=24, noise=5)

    def up(a: np.ndarray) -> np.ndarray:
        return a.repeat(2, axis=1).repeat(2, axis=2)

    big = PairArrays(small.keys, up(small.cur), up(small.his), up(small.mask), sizes=small.sizes)
    at256, at512 = calibrate(_AbsDiff(), small), calibrate(_AbsDiff(), big)
    assert at256.decision_f1 == 1.0 and at512.decision_f1 == 1.0
    assert at512.min_area_model_px == 4 * at256.min_area_model_px > 100
    assert at512.min_finding_area == at256.min_finding_area  # native px: the same regions are findings
