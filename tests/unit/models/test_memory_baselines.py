"""PatchCore and PaDiM, the single-image reference baselines: coreset, Gaussians, scores and the stored bank."""

import numpy as np
import pytest
import torch

from anodet_core.models import create_model
from anodet_core.models.patchcore import greedy_coreset

SIZE = 64


def test_greedy_coreset_covers_every_cluster_and_beats_a_random_subset():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 16, generator=g) * 20
    feats = torch.cat([c + torch.randn(200, 16, generator=g) for c in centres])
    idx = greedy_coreset(feats, 8, projection_dim=0, seed=0)
    assert len(set(idx.tolist())) == 8
    assert sorted((idx // 200).tolist()) == list(range(8))  # one point in each cluster

    def radius(sel: torch.Tensor) -> float:  # the k-centre objective: farthest point from its nearest centre
        return float(torch.cdist(feats, feats[sel]).min(dim=1).values.max())

    rand = torch.randperm(len(feats), generator=g)[:8]
    assert radius(idx) < radius(rand)
    assert torch.equal(idx, greedy_coreset(feats, 8, projection_dim=0, seed=0))  # seeded


def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(-1, 1, SIZE).view(1, 1, 1, SIZE).expand(n, 3, SIZE, SIZE)
    return base + 0.05 * torch.randn(n, 3, SIZE, SIZE, generator=g)


def _blob(x: torch.Tensor) -> torch.Tensor:
    y = x.clone()
    y[:, :, 24:40, 24:40] = 2.5
    return y


@pytest.mark.parametrize("arch", ["patchcore", "padim"])
def test_a_blob_scores_higher_and_the_map_rises_where_it_is(arch):
    model = create_model(arch, input_size=SIZE).eval()
    model.fit([_images(6, 0), _images(6, 1)])
    clean, blob = _images(4, 2), _blob(_images(4, 2))
    s_clean, m_clean = model.score_and_map(clean)
    s_blob, m_blob = model.score_and_map(blob)
    assert m_clean.shape == (4, 1, SIZE, SIZE)
    assert (s_blob > s_clean).all(), (s_clean, s_blob)
    inside = m_blob[:, 0, 28:36, 28:36].mean(dim=(1, 2))
    outside = m_blob[:, 0, :8, :8].mean(dim=(1, 2))
    assert (inside > outside).all()
    assert torch.allclose(model.image_score(blob), s_blob)


@pytest.mark.parametrize("arch", ["patchcore", "padim"])
def test_an_unfitted_model_refuses_to_score(arch):
    with pytest.raises(RuntimeError, match="fit"):
        create_model(arch, input_size=SIZE).score_and_map(_images(1, 0))


def test_patchcore_bank_is_the_coreset_share_and_survives_a_state_dict_round_trip():
    model = create_model("patchcore", input_size=SIZE, coreset_ratio=0.25).eval()
    model.fit([_images(4, 0)])
    grid = SIZE // 8
    assert model.memory.shape == (round(4 * grid * grid * 0.25), model.features.channels)
    fresh = create_model("patchcore", input_size=SIZE, coreset_ratio=0.25).eval()
    assert fresh.memory.shape[0] == 0
    fresh.load_state_dict(model.state_dict(), strict=True)
    x = _blob(_images(2, 3))
    assert torch.equal(fresh.image_score(x), model.image_score(x))


def test_padim_distance_is_the_mahalanobis_distance_of_its_gaussians():
    model = create_model("padim", input_size=SIZE, n_features=12, blur_sigma=0.0).eval().double()
    train = [_images(10, 0).double(), _images(10, 1).double()]
    model.fit(train)
    e = torch.cat([model._embed(x) for x in train]).numpy()  # (N, positions, d)
    pos = 5
    mu = e[:, pos].mean(0)
    cov = np.cov(e[:, pos], rowvar=False) + 0.01 * np.eye(e.shape[-1])
    x = _blob(_images(1, 4)).double()
    q = model._embed(x)[0, pos].numpy()
    want = float(np.sqrt((q - mu) @ np.linalg.inv(cov) @ (q - mu)))
    delta = model._embed(x) - model.mean
    got = torch.einsum("bpi,pij,bpj->bp", delta, model.inv_cov, delta).sqrt()[0, pos]
    assert float(got) == pytest.approx(want, rel=1e-4)
