"""A model trained at another input side is prepared, fed, recorded and compared at that side."""

import numpy as np
import pytest
import torch
from PIL import Image

from anodet_core.models import instance_info
from anodet_core.registry import model_store, retraining
from anodet_core.store.layout import Store
from anodet_core.training import TrainConfig, train_candidate
from anodet_core.training.candidate import _fine_tune_start

from helpers import add_capture, jpeg

TINY = {"depth": 0, "widths": [8, 8, 8, 8], "latent_dim": 16, "token_dim": 16, "num_heads": 1, "mlp_dim": 16}
NIGHTS = ["2026-03-01", "2026-03-02", "2026-03-03"]
CFG = TrainConfig(epochs=1, max_steps=2, batch_size=4, seed=0)


@pytest.fixture
def store(tmp_path) -> Store:
    """Three nights of 4 regions, 320 x 240 captures, bright squares as anomalies."""
    st = Store(str(tmp_path))
    rng = np.random.default_rng(0)
    bases = []
    for r in range(4):
        small = rng.integers(40, 120, (12, 16, 3), dtype=np.uint8)
        bases.append(np.asarray(Image.fromarray(small).resize((320, 240), Image.Resampling.BICUBIC)))
        st.write_bytes(st.reference_rel("T1", 1, f"R{r}"), jpeg(bases[-1]))
    for n, night in enumerate(NIGHTS):
        man, lab = [], []
        for r, base in enumerate(bases):
            img = np.clip(base.astype(int) + rng.integers(-4, 5, base.shape), 0, 255).astype(np.uint8)
            row, label = add_capture(st, "d", night, f"c{n}-{r}", img, (r + n) % 2 == 0, rng, train_id="T1",
                                     region_id=f"R{r}", minute=r)
            man.append(row)
            lab.append(label)
        st.write_manifest("d", night, man)
        st.write_labels("d", night, lab)
    return st


def test_a_candidate_trained_at_128_is_prepared_recorded_and_rebuilt_at_128(store):
    cand = train_candidate(store, "d", NIGHTS[:2], NIGHTS[2:], preset="lite", overrides=TINY, cfg=CFG, input_size=128)
    assert cand.test is not None and cand.test.cur.shape[1:] == (128, 128, 3) and cand.test.mask.shape[1:] == (128, 128)
    assert cand.card.config["img_size"] == 128
    assert instance_info(cand.model).input_size == 128
    card = model_store.save_version(store, cand.model, cand.card)
    model, _ = model_store.load(store, f"anodfdnet:{card.version}")
    assert instance_info(model).input_size == 128  # what the night, predict and evaluate prepare pairs at
    default = train_candidate(store, "d", NIGHTS[:2], NIGHTS[2:], preset="lite", overrides=TINY, cfg=CFG)
    assert default.test is not None and default.test.cur.shape[1] == 256 and "img_size" not in default.card.config


def test_the_shipped_base_fine_tunes_at_another_side_with_the_same_weights(store):
    base, _ = model_store.load(store, "anodfdnet:base")
    model, card, _ = _fine_tune_start(store, "anodfdnet:base", 320)
    assert instance_info(model).input_size == 320 and card.version == "base"
    a, b = base.state_dict(), model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_position_embedding_tied_to_its_grid_is_refused_at_another_side(store):
    from anodet_core.models import create_model
    from anodet_core.registry.model_store import ModelCard

    lite = create_model("anodfdnet", preset="lite", **TINY)  # a 16 x 16 position embedding
    card = model_store.save_version(store, lite, ModelCard(name="anodfdnet", arch="anodfdnet", preset="lite",
                                                           config=dict(TINY), threshold=0.5))
    with pytest.raises(ValueError, match="cannot be fed at 128 px"):
        _fine_tune_start(store, f"anodfdnet:{card.version}", 128)


def test_production_is_compared_on_the_same_pairs_prepared_at_its_own_side(store, monkeypatch):
    from anodet_core.models import create_model
    from anodet_core.registry.model_store import ModelCard

    monkeypatch.setattr(model_store, "packaged_folder", lambda name: None)
    prod = model_store.save_version(store, create_model("anodfdnet", preset="lite", **TINY),
                                    ModelCard(name="anodfdnet", arch="anodfdnet", preset="lite", config=dict(TINY),
                                              threshold=0.5))
    model_store.set_alias(store, "anodfdnet", prod.version)
    cand = train_candidate(store, "d", NIGHTS[:2], NIGHTS[2:], preset="lite", overrides=TINY, cfg=CFG, input_size=128)
    sizes = []
    real = retraining.prepare_arrays

    def spy(read, pairs, **kw):
        sizes.append(kw["size"])
        return real(read, pairs, **kw)

    monkeypatch.setattr(retraining, "prepare_arrays", spy)
    promo, cand_m, prod_m = retraining.register_and_maybe_promote(store, cand)
    assert sizes == [256] and [p.key for p in cand.test_pairs] == cand.test.keys
    assert prod_m is not None and promo.production_version == prod.version


def test_retraining_fine_tunes_the_base_at_the_production_side(store):
    from anodet_core.models import create_model
    from anodet_core.registry.model_store import ModelCard
    from flows.retrain import _production_sides

    assert _production_sides(store, "anodfdnet") == (None, None)  # nothing promoted: the base's own side
    cfg = {**TINY, "img_size": 128}
    card = model_store.save_version(store, create_model("anodfdnet", preset="lite", **cfg),
                                    ModelCard(name="anodfdnet", arch="anodfdnet", preset="lite", config=cfg, threshold=0.5))
    model_store.set_alias(store, "anodfdnet", card.version)
    assert _production_sides(store, "anodfdnet") == (128, None)
    ranked = {**cfg, "img_size": 256, "decide_scale": 0.5, "rank_scales": [1.0], "pos_embed": False}
    card = model_store.save_version(store, create_model("anodfdnet", preset="lite", **ranked),
                                    ModelCard(name="anodfdnet", arch="anodfdnet", preset="lite", config=ranked, threshold=0.5))
    model_store.set_alias(store, "anodfdnet", card.version)
    assert _production_sides(store, "anodfdnet") == (128, 256)  # trained at 128, ranks at 256


@pytest.mark.parametrize("aurocs, kept", [((0.6, 0.9), True), ((0.8, 0.81), False)])
def test_a_rank_size_is_kept_only_when_validation_captures_rank_better(store, monkeypatch, aurocs, kept):
    from anodet_core.scoring import calibration
    from anodet_core.training.candidate import RANK_GAIN

    seen = []

    def fake_auroc(model, val, cal, device="cpu"):  # the measured rankings, at the training side then the rank side
        seen.append(val.cur.shape[1])
        return aurocs[len(seen) - 1]

    monkeypatch.setattr(calibration, "capture_auroc", fake_auroc)
    assert (aurocs[1] >= aurocs[0] + RANK_GAIN) is kept
    cand = train_candidate(store, "d", NIGHTS[:2], NIGHTS[2:], preset="lite", overrides={**TINY, "pos_embed": False},
                           cfg=CFG, input_size=64, rank_size=128)
    assert seen == [64, 128]
    rec = cand.card.extra["rank_size"]
    assert rec == {"size": 128, "val_capture_auroc": aurocs[0], "val_capture_auroc_ranked": aurocs[1], "kept": kept}
    side = 128 if kept else 64
    assert cand.test is not None and cand.test.cur.shape[1] == side and instance_info(cand.model).input_size == side
    card = model_store.save_version(store, cand.model, cand.card)
    model, _ = model_store.load(store, f"anodfdnet:{card.version}")
    assert instance_info(model).input_size == side
    assert (model.cfg.decide_scale, model.cfg.rank_scales) == ((0.5, (1.0,)) if kept else (1.0, ()))
    again, _, config = _fine_tune_start(store, f"anodfdnet:{card.version}", None)  # fine-tuned again at its decision side
    assert instance_info(again).input_size == 64 and "rank_scales" not in config
