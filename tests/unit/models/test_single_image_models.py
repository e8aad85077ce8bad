"""CSA-Flow and AnoViT: invertibility, per-image likelihood, shapes, one training step."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the network

import copy  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from anodet_core.models import anovit as av  # noqa: E402
from anodet_core.models import create_model, list_models, list_presets  # noqa: E402
from anodet_core.models import csaflow as csa  # noqa: E402
from anodet_core.models.backbones import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

SIZE = 128  # CSA-Flow test input: stride-16 maps of 8x8, 4x4, 2x2


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-zero gammas and SE output layer, so the flow/attention are not identities."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma") or "channel_attn.fc2" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.fixture(scope="module")
def lite_model() -> csa.CSAFlow:
    """Lite CSA-Flow (narrow subnets) with randomised gammas / SE head; float32, eval."""
    torch.manual_seed(0)
    m = create_model("csaflow", "lite", hidden_channels=16).eval()
    _randomise(m)
    return m


@pytest.fixture(scope="module")
def model64(lite_model) -> csa.CSAFlow:
    """float64 copy: attention + flow run in double (the frozen backbone stays float32 --
    depthwise convs in double are very slow on CPU and are not what these tests check)."""
    return copy.deepcopy(lite_model).double()


@pytest.fixture(scope="module")
def raw4(lite_model) -> list[torch.Tensor]:
    """Backbone features of 4 random images, cast to double."""
    torch.manual_seed(1)
    return [f.double() for f in lite_model.backbone_features(torch.randn(4, 3, SIZE, SIZE))]


def test_registered():
    assert {"csaflow", "anovit"} <= set(list_models())
    assert list_presets("csaflow") == ["paper", "lite"]
    assert list_presets("anovit") == ["paper", "lite", "pixel", "hybrid"]
    with pytest.raises(ValueError, match="unknown CSA-Flow config"):
        create_model("csaflow", "lite", hidden=3)


def test_csaflow_invertible(model64, raw4):
    with torch.no_grad():
        feats = model64.attend(raw4)
        zs, log_det = model64.flow(feats)
        back = model64.inverse(zs)
    assert log_det.abs().min() > 1.0  # randomised gammas: not the identity
    assert max((z - f).abs().max().item() for z, f in zip(zs, feats)) > 1e-2
    for f, b in zip(feats, back):
        torch.testing.assert_close(b, f, atol=1e-4, rtol=0)


def test_csaflow_invertible_end_to_end_float32(lite_model):
    # API wiring in float32.  Gammas scaled down: a random flow with O(1) gammas is too
    # ill-conditioned (scales up to e^3 per coupling) for a float32 round trip.
    m = copy.deepcopy(lite_model)
    with torch.no_grad():
        for b in m.flow.blocks:
            b.s1.gamma.mul_(0.05)
            b.s2.gamma.mul_(0.05)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        feats = m.features(x)
        zs, log_det = m(x)
        back = m.inverse(zs)
    assert log_det.abs().min() > 1e-3
    for f, b in zip(feats, back):
        torch.testing.assert_close(b, f, atol=1e-3, rtol=1e-4)


def test_flow_log_det_matches_autograd_jacobian():
    cfg = csa.CSAFlowConfig(pretrained=False, hidden_channels=8)
    flow = csa.CrossScaleFlow(4, cfg).double()
    _randomise(flow, seed=1)
    shapes = [(4, 4, 4), (4, 2, 2), (4, 1, 1)]
    sizes = [c * h * w for c, h, w in shapes]
    v = torch.randn(sum(sizes), dtype=torch.float64)

    def f(vec: torch.Tensor) -> torch.Tensor:
        xs = [p.reshape(1, *s) for p, s in zip(vec.split(sizes), shapes)]
        return torch.cat([z.flatten() for z in flow(xs)[0]])

    jac = torch.autograd.functional.jacobian(f, v)
    xs = [p.reshape(1, *s) for p, s in zip(v.split(sizes), shapes)]
    with torch.no_grad():
        _, log_det = flow(xs)
    assert abs(log_det.item()) > 1e-2
    torch.testing.assert_close(log_det[0], torch.linalg.slogdet(jac).logabsdet, atol=1e-8, rtol=1e-8)


def test_csaflow_per_image_log_det_and_loss(model64, raw4):
    def run(feats):
        return model64.flow(model64.attend(feats))

    with torch.no_grad():
        zs, ld_batch = run(raw4)
        loss_batch = model64.loss_from(zs, ld_batch)
        nll_batch = model64.nll_from(zs, ld_batch)
        singles = [run([f[i : i + 1] for f in raw4]) for i in range(4)]
    assert ld_batch.shape == (4,) and nll_batch.shape == (4,)
    for i, (_, ld) in enumerate(singles):
        torch.testing.assert_close(ld[0], ld_batch[i], atol=1e-4, rtol=0)
    single_losses = torch.stack([model64.loss_from(z, ld) for z, ld in singles])
    torch.testing.assert_close(loss_batch, single_losses.mean(), atol=1e-6, rtol=1e-9)
    dims = sum(z[0].numel() for z in zs)
    torch.testing.assert_close(loss_batch, nll_batch.mean() / dims)  # normalise_loss=True
    # The real forward/loss entry points agree with the feature-level ones.
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        m32 = copy.deepcopy(model64).float()
        torch.testing.assert_close(m32.loss(x), m32.loss_from(*m32.flow(m32.features(x))))


def test_csaflow_shapes_lite():
    assert create_model("csaflow", "lite").cfg.image_score == "max" and csa.PRESETS["paper"].image_score == "mean"
    m = create_model("csaflow", "lite", image_score="mean").eval()  # the reference score
    assert m.cfg.normalise_features
    assert m.channels == m.backbone.feature_info.channels()[0] == 112
    x = torch.randn(2, 3, SIZE, 192)
    with torch.no_grad():
        zs, log_det = m(x)
        amap = m.anomaly_map(x)
        score = m.image_score(x)
    assert [tuple(z.shape) for z in zs] == [(2, 112, 8, 12), (2, 112, 4, 6), (2, 112, 2, 3)]
    assert log_det.shape == (2,)
    assert amap.shape == (2, 1, SIZE, 192)
    assert score.shape == (2,)
    torch.testing.assert_close(score, csa.CSAFlow.score_from(zs))
    with pytest.raises(ValueError, match="multiples of 64"):
        m(torch.randn(1, 3, 100, 128))


def test_csaflow_paper_builds():
    m = create_model("csaflow", "paper").eval()
    assert m.flow.blocks[0].s1.conv_in[0].out_channels == 1024
    assert [b.s1.conv_in[0].kernel_size[0] for b in m.flow.blocks] == [3, 3, 3, 5]
    with torch.no_grad():
        zs, log_det = m(torch.randn(1, 3, 64, 64))
    assert [tuple(z.shape) for z in zs] == [(1, 112, 4, 4), (1, 112, 2, 2), (1, 112, 1, 1)]
    assert torch.all(log_det == 0)  # zero gammas: every block starts as the identity


def test_csaflow_train_step_reaches_flow_not_backbone():
    torch.manual_seed(0)
    m = create_model("csaflow", "lite", hidden_channels=16)
    bb_before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    opt = csa.make_optimizer(m)
    assert opt.defaults["lr"] == m.cfg.lr == 1e-3 and opt.defaults["betas"] == csa.ADAM_BETAS  # lite: 5x
    assert create_model("csaflow", "paper").cfg.lr == csa.ADAM_LR == 2e-4  # the reference's
    x = torch.randn(2, 3, SIZE, SIZE)

    loss = csa.train_step(m, x, opt)  # zero-init gammas: only gammas / SE head see gradient
    assert torch.isfinite(torch.tensor(loss))
    assert not m.backbone.training and m.training
    for name, p in m.named_parameters():
        if name.startswith("backbone."):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(b.s1.gamma.grad.abs().sum() > 0 for b in m.flow.blocks)
    for k, v in m.backbone.state_dict().items():
        assert torch.equal(v, bb_before[k]), k  # weights and BN running stats untouched

    _randomise(m)
    loss = csa.train_step(m, x, opt)
    assert torch.isfinite(torch.tensor(loss))
    for name, p in m.named_parameters():
        if not name.startswith("backbone.") and name.endswith("weight"):
            assert p.grad.abs().sum() > 0, name


def test_anovit_pixel_shapes_and_step():
    torch.manual_seed(0)
    m = create_model("anovit", "pixel")
    assert m.embed_dim == 192 and len(m.encoder.blocks) == 4
    convs = [layer for layer in m.decoder if isinstance(layer, torch.nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0], c.padding[0]) for c in convs] == [
        (192, 256, 1, 0), (256, 128, 1, 0), (128, 64, 1, 0), (64, 32, 2, 1), (32, 16, 2, 1), (16, 3, 2, 1)
    ]
    assert sum(isinstance(layer, torch.nn.InstanceNorm2d) for layer in m.decoder) == 5
    assert not isinstance(m.decoder[-1], (torch.nn.ReLU, torch.nn.InstanceNorm2d))
    x = torch.randn(2, 3, 128, 160)
    assert m.encode(x).shape == (2, 192, 8, 10)  # CLS dropped, patch grid kept
    assert m(x).shape == (2, 3, 128, 160)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    loss = m.loss(x)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    m.eval()
    with torch.no_grad():
        amap, score = m.anomaly_map(x), m.image_score(x)
    assert amap.shape == (2, 1, 128, 160) and score.shape == (2,)
    torch.testing.assert_close(score, amap.amax(dim=(1, 2, 3)))


def test_anovit_local_weights(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    src = create_model("anovit", "pixel")
    sd = {k: v.clone() for k, v in src.encoder.state_dict().items()}
    path = tmp_path / "vit.safetensors"
    save_file(sd, str(path))
    m = create_model("anovit", "pixel", pretrained=str(path))
    for k, v in m.encoder.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_anovit_paper_builds():
    m = create_model("anovit", "paper").eval()
    n_enc = sum(p.numel() for p in m.encoder.parameters())
    assert 85e6 < n_enc < 87e6 and m.embed_dim == 768 and m.decoder[0].in_channels == 768
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert m.encode(x).shape == (1, 768, 14, 14)
        assert m.anomaly_map(x).shape == (1, 1, 224, 224)


def test_gaussian_blur_matches_scipy():
    from scipy.ndimage import gaussian_filter

    x = torch.rand(1, 1, 40, 37, dtype=torch.float64)
    ref = gaussian_filter(x[0, 0].numpy(), sigma=4.0, mode="nearest", truncate=4.0)
    torch.testing.assert_close(av.gaussian_blur(x, 4.0)[0, 0], torch.from_numpy(ref))
    assert av.gaussian_blur(x, 0.0) is x


def test_anovit_hybrid_reconstructs_its_frozen_feature_stem():
    torch.manual_seed(0)
    m = create_model("anovit", "hybrid", img_size=128, depth=1)
    assert m.stem is not None and m.stem.channels == 152 and m.patch_size == 1
    x = torch.randn(2, 3, 128, 128)
    t = m.target(x)
    assert t.shape == (2, 152, 8, 8)  # stride 8 + 16 levels on the stride-16 grid
    # the stem sees ImageNet normalisation: the model's (x - 0.5) / 0.5 input mapped back to it exactly
    x01 = x * 0.5 + 0.5
    imagenet = (x01 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(t, m.stem(imagenet))
    stem_before = {k: v.clone() for k, v in m.stem.state_dict().items()}
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    m.train()
    assert not m.stem.training  # frozen: BN statistics never move
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = m.loss(x)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    assert all(torch.equal(v, stem_before[k]) for k, v in m.stem.state_dict().items())
    m.eval()
    with torch.no_grad():
        score, amap = m.score_and_map(x)
    assert amap.shape == (2, 1, 128, 128) and torch.allclose(score, amap.amax(dim=(1, 2, 3)))
    with pytest.raises(ValueError, match="stem"):
        create_model("anovit", "hybrid", pretrained="vit.safetensors")


def test_anovit_inpaint_predicts_each_token_from_its_context_only():
    torch.manual_seed(0)
    m = create_model("anovit", "lite", img_size=128, depth=1, channel_stats=False).eval()  # the scalar z-score
    assert m.cfg.mask_block == 1 and m.cfg.normalise_features and m.cfg.position_stats
    masks = m.inference_masks(8, 8)
    assert masks.shape == (4, 1, 8, 8) and torch.equal(masks.sum(0), torch.ones(1, 8, 8, dtype=torch.long))
    m2 = create_model("anovit", "lite", img_size=128, depth=1, mask_block=2)
    assert m2.inference_masks(8, 8)[0, 0, :4, :4].tolist() == [[True, True, False, False]] * 2 + [[False] * 4] * 2
    train_mask = m.training_mask(16, 8, 8)
    assert train_mask.shape == (16, 1, 8, 8) and all(int(k.sum()) == 16 for k in train_mask)  # a quarter each
    # a masked token's prediction does not depend on its own value: an anomaly there cannot be copied through
    t = torch.randn(1, 152, 8, 8)
    changed = t.clone()
    changed[:, :, 2, 3] += 10.0
    mask = masks[[k for k in range(4) if masks[k, 0, 2, 3]][0]]
    with torch.no_grad():
        a, b = m.reconstruct(t, mask), m.reconstruct(changed, mask)
    torch.testing.assert_close(a[..., 2, 3], b[..., 2, 3])
    assert not torch.allclose(m.reconstruct(t)[..., 2, 3], m.reconstruct(changed)[..., 2, 3])  # unmasked: it does
    # the changed token's error is what the map shows
    with torch.no_grad():
        err = m.token_error(changed) - m.token_error(t)
    assert err[0, 0].flatten().argmax() == 2 * 8 + 3
    # standardisation and per-token error statistics are fitted, stored and used
    x = torch.randn(4, 3, 128, 128)
    with torch.no_grad():
        m.fit_feature_stats([m.stem_features(x)])
        f = m.target(x)
        assert f.mean(dim=(0, 2, 3)).abs().max() < 1e-4 and (f.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3
        m.fit_error_stats([f])
        e = m.token_error(f)
        torch.testing.assert_close(m.error_stats[0], e.mean(0))
        z = (e - m.error_stats[0]) / m.error_stats[1]
        torch.testing.assert_close(z.mean(0), torch.zeros_like(z[0]), atol=1e-5, rtol=0)
    state = m.state_dict()
    assert {"feature_stats", "error_stats", "mask_token"} <= set(state)
    m3 = create_model("anovit", "lite", img_size=128, depth=1, channel_stats=False)
    m3.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(m3.anomaly_map(x), m.anomaly_map(x))
    with pytest.raises(ValueError, match="need stem 'lite'"):
        create_model("anovit", "pixel", mask_block=1)
    # channel_stats: each channel's residual standardised per token; a normal image's map averages about 1
    m4 = create_model("anovit", "lite", img_size=128, depth=1).eval()
    assert m4.cfg.channel_stats  # the preset's
    with torch.no_grad():
        m4.fit_feature_stats([m4.stem_features(x)])
        f4 = m4.target(x)
        m4.fit_error_stats([f4])
        assert m4.error_stats.shape == (2, 152, 8, 8)
        torch.testing.assert_close(m4.error_stats[0], m4.token_residual(f4).mean(0))
        z4 = m4.standard_error(f4)
        assert z4.shape == (4, 1, 8, 8) and abs(float(z4.mean()) - 0.75) < 0.01  # (n-1)/n of 1 with n = 4 images
        bad = f4.clone()
        bad[:, :, 5, 1] += 3.0
        assert (m4.standard_error(bad) - z4)[:, 0].flatten(1).argmax(1).tolist() == [5 * 8 + 1] * 4
    with pytest.raises(ValueError, match="needs position_stats"):
        create_model("anovit", "pixel", channel_stats=True)


def test_csaflow_feature_pyramid_and_max_score():
    m = create_model("csaflow", "lite", feature_strides=(16, 8), kernel_sizes=(1, 1, 1, 1), image_score="max").eval()
    assert m.cfg.feature_strides == (8, 16) and m.channels == 40 + 112 and m.cfg.size_multiple == 64
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        feats = m.backbone_features(x)
        assert [tuple(f.shape) for f in feats] == [(2, 152, 16, 16), (2, 152, 8, 8), (2, 152, 4, 4)]
        score, amap = m.score_and_map(x)
        zs, _ = m(x)
    assert amap.shape == (2, 1, 128, 128)
    torch.testing.assert_close(score, amap.amax(dim=(1, 2, 3)))  # max of the smoothed map, not mean z^2
    assert not torch.allclose(score, csa.CSAFlow.score_from(zs))
    with pytest.raises(ValueError, match="no feature level with stride 12"):
        create_model("csaflow", "lite", feature_strides=(8, 12), input_size=192)
    with pytest.raises(ValueError, match="image_score"):
        create_model("csaflow", "lite", image_score="median")


@pytest.mark.parametrize("flips", [True, False])
def test_anovit_trains_on_flipped_images_only_when_its_config_says_so(monkeypatch, flips):
    from anodet_core.single_image import training

    seen: list[int] = []
    real = training.flip_augment
    monkeypatch.setattr(training, "flip_augment", lambda x, which: (seen.append(which), real(x, which))[1])
    import numpy as np

    images = np.random.default_rng(0).integers(0, 256, (8, 128, 128, 3), dtype=np.uint8)
    training.train_single_image("anovit", images, preset="lite", overrides={"img_size": 128, "depth": 1,
                                                                             "train_flips": flips}, epochs=1)
    assert len(seen) == 8 and (set(seen) != {0}) == flips
    assert not create_model("anovit", "lite").cfg.train_flips  # the preset trains on the images as captured
