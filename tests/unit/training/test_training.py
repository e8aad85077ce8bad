"""Training protocol: augmentation, determinism, resume, best-F1 selection, limits, threshold calibration."""

import numpy as np
import pytest
import torch

from anodet_core.models import create_model
from anodet_core.training import PairArrays, TrainConfig, flip_augment, mask_to_model, split_indices, train_pairs

TINY = dict(preset="lite", depth=0, widths=(8, 8, 8, 8), latent_dim=16, token_dim=16, num_heads=1, mlp_dim=16)


def _data(n=6, seed=0):
    rng = np.random.default_rng(seed)
    cur = rng.integers(0, 255, (n, 256, 256, 3), dtype=np.uint8)
    his = cur.copy()
    mask = np.zeros((n, 256, 256), np.uint8)
    for i in range(0, n, 2):  # every other pair has a bright square in cur
        cur[i, 100:140, 60:120] = 255
        mask[i, 100:140, 60:120] = 1
    return PairArrays([str(i) for i in range(n)], cur, his, mask, [])


def _model(seed=0):
    torch.manual_seed(seed)
    return create_model("anodfdnet", **TINY)


def _weights(m):
    return torch.cat([p.detach().flatten() for p in m.state_dict().values() if p.is_floating_point()])


def test_augmentations_are_the_four_of_the_paper_and_joint():
    x = torch.arange(16.0).reshape(1, 4, 4)
    assert torch.equal(flip_augment(x, 0), x)
    assert torch.equal(flip_augment(x, 1), x.flip(-2))
    assert torch.equal(flip_augment(x, 2), x.flip(-1))
    assert torch.equal(flip_augment(x, 3), torch.rot90(x, 2, (-2, -1)))


def test_thin_structures_survive_the_mask_resize():
    m = np.zeros((1200, 1920), bool)
    m[600:603, 100:1800] = True  # a 3 px scratch at native size
    small = mask_to_model(m)
    assert small.shape == (256, 256) and small.sum() > 200


def test_split_is_8_to_2_and_seeded():
    tr, va = split_indices(50, 0.2, seed=3)
    assert len(tr) == 40 and len(va) == 10 and not set(tr) & set(va)
    assert split_indices(50, 0.2, seed=3) == (tr, va) and split_indices(50, 0.2, seed=4) != (tr, va)


def test_same_seed_same_weights_and_resume_matches_uninterrupted(tmp_path):
    data = _data()
    cfg = TrainConfig(epochs=2, batch_size=2, seed=7, synthetic=0.5)
    a = _model()
    ra = train_pairs(a, data, data, cfg)
    b = _model()
    train_pairs(b, data, data, cfg)
    assert torch.equal(_weights(a), _weights(b))
    ck = str(tmp_path / "ck.pt")
    c = _model()
    train_pairs(c, data, data, TrainConfig(epochs=1, batch_size=2, seed=7, synthetic=0.5), checkpoint=ck)
    c2 = _model(seed=99)  # resuming restores the weights, whatever the fresh model holds
    rc = train_pairs(c2, data, data, cfg, checkpoint=ck)
    assert torch.equal(_weights(c2), _weights(a))
    assert [h["loss"] for h in rc.history] == pytest.approx([h["loss"] for h in ra.history])
    assert rc.best_epoch == ra.best_epoch


def test_best_checkpoint_is_the_best_validation_epoch_and_limits_hold():
    data = _data()
    r = train_pairs(_model(), data, data, TrainConfig(epochs=4, batch_size=2, seed=1))
    scores = [(h["val_f1"], h["val_auc"]) for h in r.history]
    assert r.best_epoch == 1 + scores.index(max(scores))
    assert 0.25 <= r.threshold <= 0.75
    r = train_pairs(_model(), data, data, TrainConfig(epochs=50, batch_size=2, max_seconds=0.0))
    assert len(r.history) == 1  # the wall-time limit stops after the first epoch
    with pytest.raises(ValueError):
        train_pairs(_model(), data.subset([]), None, TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="unknown loss"):
        train_pairs(_model(), data, None, TrainConfig(epochs=1, loss="l2"))


def test_a_fine_tune_that_only_hurts_returns_the_weights_it_started_from(monkeypatch):
    """``start_is_candidate``: the starting weights are validated as epoch 0 and win when no epoch beats them."""
    import anodet_core.training.loop as loop

    data = _data()
    scores = iter([0.6, 0.4, 0.5])  # validation F1: the start, then epochs 1 and 2 (worse)
    calls = []

    def scripted(model, val, device="cpu", **kw):
        calls.append(_weights(model).clone())
        return {"f1": next(scores), "auc": 0.9, "precision": 0.5, "recall": 0.5, "iou": 0.4}

    monkeypatch.setattr(loop, "evaluate_arrays", scripted)
    model = _model()
    start = _weights(model).clone()
    r = train_pairs(model, data, data, TrainConfig(epochs=2, batch_size=2, seed=1, lr=1e-2), start_is_candidate=True)
    assert len(calls) == 3 and torch.equal(calls[0], start) and not torch.equal(calls[1], start)  # it did train
    assert r.best_epoch == 0 and r.best_val["val_f1"] == 0.6 and [h["val_f1"] for h in r.history] == [0.4, 0.5]
    assert torch.equal(_weights(model), start)
    # without the flag the best trained epoch comes back, however it compares with the start
    scores, calls[:] = iter([0.4, 0.5]), []
    r = train_pairs(_model(), data, data, TrainConfig(epochs=2, batch_size=2, seed=1, lr=1e-2))
    assert len(calls) == 2 and r.best_epoch == 2


def test_the_latest_night_validates_when_there_are_two_or_more():
    from anodet_core.training import split_last_group

    groups = ["2026-01-02", "2026-01-01", "2026-01-03", "2026-01-01", "2026-01-03"]
    assert split_last_group(5, groups) == ([0, 1, 3], [2, 4])
    one = ["2026-01-01"] * 10  # a single night: the seeded 8:2 split
    assert split_last_group(10, one, 0.2, 3) == split_indices(10, 0.2, 3)
    assert split_last_group(10, [], 0.2, 3) == split_indices(10, 0.2, 3)  # no groups known
