"""The base model shipped inside the package: loads offline, its card holds the evidence, and it finds changes."""


import numpy as np
import pytest
import skimage.data

from anodet_core.evaluation.metrics import PixelMetrics
from anodet_core.imaging.prepare import prepare_pair
from anodet_core.pretraining.synth import synth_pair
from anodet_core.registry import model_store
from anodet_core.scoring.predictor import Predictor
from anodet_core.store.layout import Store
from anodet_core.training import mask_to_model


def test_shipped_base_loads_offline_and_its_card_records_data_code_and_held_out_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = model_store.packaged_folder("anodfdnet")
    assert folder, "anodet_core/weights/anodfdnet-base is missing: the package must ship a working default"
    store = Store(str(tmp_path))  # an empty store: no production version, so NAME falls back to the shipped one
    card = model_store.resolve_card(store, "anodfdnet")
    assert (card.name, card.version, card.arch, card.preset) == ("anodfdnet", "base", "anodfdnet", "base")
    assert len(card.data_fingerprint) == 16 and card.code_version
    assert 0.25 <= card.threshold <= 0.75 and card.min_finding_area >= 1
    assert card.no_history_score is not None and 0.0 < card.no_history_score < card.threshold  # never a finding alone
    assert "held-out photographs" in card.eval_split
    for key in ("f1", "iou", "auc", "image_auroc", "f1_at_op", "decision_recall"):
        assert key in card.metrics
    assert not set(card.extra["pretraining"]["train_photos"]) & set(card.extra["pretraining"]["test_photos"])
    model, same = model_store.load(store, "anodfdnet:base")
    assert same.version == "base"
    n = sum(p.numel() for p in model.parameters())
    assert 1_000_000 < n < 6_000_000  # <= 25 MB of fp32 safetensors


@pytest.mark.parametrize("photo", ["astronaut", "clock"])  # held-out photographs of the corpus
def test_shipped_base_finds_pasted_changes_and_ignores_nuisance(tmp_path, photo):
    store = Store(str(tmp_path))
    model, card = model_store.load(store, "anodfdnet")
    predictor = Predictor(model, "cpu", fast=False)
    img = np.asarray(getattr(skimage.data, photo)())
    donors = [np.asarray(skimage.data.coffee()), np.asarray(skimage.data.hubble_deep_field())]
    rng = np.random.default_rng(7)
    changed, normal = PixelMetrics(), []
    for _ in range(6):
        pair = synth_pair(img, donors, rng, p_change=1.0)
        prep = prepare_pair(pair.cur_jpeg, pair.his_jpeg)
        score = predictor.predict(prep.cur[None], prep.his[None])[0].numpy()
        changed.update(score, mask_to_model(pair.mask))
    for _ in range(3):
        pair = synth_pair(img, donors, rng, p_change=0.0)
        prep = prepare_pair(pair.cur_jpeg, pair.his_jpeg)
        normal.append(float((predictor.predict(prep.cur[None], prep.his[None])[0].numpy() > card.threshold).mean()))
    m = changed.compute()
    assert m["auc"] > 0.85 and m["f1"] > 0.4, m  # a random-init model scores AUC ~0.5, F1 ~0
    assert max(normal) < 0.02, normal  # nuisance alone flags (almost) nothing
