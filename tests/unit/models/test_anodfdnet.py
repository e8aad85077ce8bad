"""AnoDFDNet architecture + model registry (fast, CPU only)."""

from __future__ import annotations

import pytest
import torch

from anodet_core.models import create_model, list_models, list_presets
from anodet_core.models.anodfdnet import INPUT_SIZE, MEAN, STD, AnoDFDNet, AnoDFDNetConfig

PAPER_PARAMS = 35_928_064


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _pair(b: int, size: int = INPUT_SIZE, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cur, his = ((torch.rand(b, 3, size, size, generator=g) - MEAN) / STD for _ in range(2))
    return cur, his


@pytest.fixture(scope="module")
def lite() -> AnoDFDNet:
    torch.manual_seed(0)
    return create_model("anodfdnet", preset="lite").eval()


def test_paper_param_count_and_output() -> None:
    torch.manual_seed(0)
    m = create_model("anodfdnet", preset="paper").eval()
    assert _n_params(m) == PAPER_PARAMS
    with torch.inference_mode():
        y = m(*_pair(1))
    assert y.shape == (1, 1, 256, 256)
    assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1


def test_lite_output_and_logits(lite: AnoDFDNet) -> None:
    cur, his = _pair(2)
    with torch.inference_mode():
        y = lite(cur, his)
        logits = lite.forward_logits(cur, his)
    assert y.shape == (2, 1, 256, 256)
    assert y.min() >= 0 and y.max() <= 1
    torch.testing.assert_close(y, torch.sigmoid(logits))


def test_symmetric_in_cur_his(lite: AnoDFDNet) -> None:
    cur, his = _pair(2, 128)
    with torch.inference_mode():
        torch.testing.assert_close(lite(cur, his), lite(his, cur), atol=1e-5, rtol=0)


def test_symmetric_in_train_mode_thanks_to_shared_bn() -> None:
    # cur and his share one 2B batch, so even batch-statistics BN keeps the map symmetric.
    torch.manual_seed(0)
    m = create_model("anodfdnet", preset="lite", pos_drop=0.0, mlp_drop=0.0).train()
    cur, his = _pair(2, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(cur, his), m(his, cur), atol=1e-5, rtol=0)


@pytest.mark.parametrize("depth", [0, 1, 4])
def test_depths_build_and_run(depth: int) -> None:
    m = create_model("anodfdnet", preset="lite", depth=depth).eval()
    assert len(m.transformer.blocks) == depth
    with torch.inference_mode():
        y = m(*_pair(1, 64))  # 4x4 tokens: also exercises position-embedding interpolation
    assert y.shape == (1, 1, 64, 64) and torch.isfinite(y).all()


def test_attn_out_proj_switch_changes_output(lite: AnoDFDNet) -> None:
    ref = create_model("anodfdnet", preset="lite", attn_out_proj=False).eval()
    ref.load_state_dict(lite.state_dict())  # same parameters: the projection is still held
    assert _n_params(ref) == _n_params(lite)
    cur, his = _pair(1, 64)
    deep = torch.randn(1, 256, 4, 4)
    with torch.inference_mode():
        assert (lite.transformer(deep) - ref.transformer(deep)).abs().max() > 1e-2
        assert not torch.allclose(lite.forward_logits(cur, his), ref.forward_logits(cur, his), atol=1e-6)


def test_registry() -> None:
    assert "anodfdnet" in list_models()
    assert set(list_presets("anodfdnet")) >= {"paper", "lite"}
    m = create_model("anodfdnet", preset="lite", depth=0)
    assert isinstance(m, AnoDFDNet) and m.cfg.depth == 0 and m.cfg.token_dim == 256
    assert isinstance(create_model("anodfdnet").cfg, AnoDFDNetConfig)
    with pytest.raises(ValueError, match="anodfdnet"):
        create_model("no_such_model")
    with pytest.raises(ValueError, match="lite"):
        create_model("anodfdnet", preset="huge")
    with pytest.raises(ValueError, match="depth"):
        create_model("anodfdnet", preset="lite", dept=3)


def test_bf16_autocast_matches_fp32(lite: AnoDFDNet) -> None:
    cur, his = _pair(2, 128)
    with torch.inference_mode():
        ref = lite(cur, his)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = lite(cur, his)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.05


def test_channels_last_matches(lite: AnoDFDNet) -> None:
    cur, his = _pair(2, 64)
    m = create_model("anodfdnet", preset="lite").eval()
    m.load_state_dict(lite.state_dict())
    m = m.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = lite(cur, his)
        out = m(cur.to(memory_format=torch.channels_last), his.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_train_step_backward() -> None:
    torch.manual_seed(0)
    m = create_model("anodfdnet", preset="lite").train()
    cur, his = _pair(2, 64)
    target = torch.zeros(2, 1, 64, 64)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(m.forward_logits(cur, his), target)
    loss.backward()
    grads = [p.grad for n, p in m.named_parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert m.transformer.blocks[0].attn.out.weight.grad is not None  # projection is used


def test_bad_inputs_rejected(lite: AnoDFDNet) -> None:
    with pytest.raises(ValueError):
        lite(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 48))
    with pytest.raises(ValueError):
        lite(torch.zeros(1, 3, 60, 60), torch.zeros(1, 3, 60, 60))


def test_a_rank_scale_orders_pixels_below_the_decision_map_and_never_decides() -> None:
    import dataclasses

    from anodet_core.models.anodfdnet import RANK_MARGIN
    from anodet_core.store.maps import quantize

    torch.manual_seed(0)
    m = create_model("anodfdnet", preset="lite", pos_embed=False, img_size=128).eval()
    cur, his = _pair(2, 128)
    with torch.inference_mode():
        full = m.forward_logits(cur, his)
        half = torch.nn.functional.interpolate(m.forward_logits(*(torch.nn.functional.interpolate(
            x, size=(64, 64), mode="bilinear", antialias=True, align_corners=False) for x in (cur, his))),
            size=(128, 128), mode="bilinear", align_corners=False)
        m.cfg = dataclasses.replace(m.cfg, decide_scale=0.5, rank_scales=(1.0,), map_temperature=6.0)
        fused = m.forward_logits(cur, his)
        stored = quantize(m(cur, his).numpy(), "uint8")
    assert torch.allclose(fused, torch.maximum(half, -RANK_MARGIN - torch.nn.functional.softplus(-full)), atol=1e-5)
    assert torch.equal(fused > 0, half > 0)  # the decision at 0.5 is the decide scale's alone
    assert stored.max() <= 255  # (shape and dtype of the stored map)
    # a stand-in net whose logits follow the pixel difference: a 1 px line shows at the full side only, a block at both
    m._forward_one = lambda c, h: 40 * (c - h).abs().amax(1, keepdim=True) - 10  # type: ignore[method-assign]
    his = torch.zeros(1, 3, 128, 128)
    cur = his.clone()
    cur[..., 30, 10:110] = 0.4
    cur[..., 80:96, 80:96] = 0.6
    with torch.inference_mode():
        fused = m.forward_logits(cur, his)
        stored = quantize(m(cur, his).numpy(), "uint8")
    line, block = fused[0, 0, 30, 20:100], fused[0, 0, 82:94, 82:94]
    assert bool((block > 0).all()) and bool((line < -RANK_MARGIN).all())  # the block decides, the line does not
    assert bool((line > -RANK_MARGIN - 0.01).all())  # but it ranks right under the threshold, above the background
    assert float(fused[0, 0, 60, 20:100].max()) < -5
    assert stored[0, 0, 30, 20:100].max() <= 126 < stored[0, 0, 82:94, 82:94].min()


def test_multiscale_needs_a_model_free_of_a_position_embedding() -> None:
    with pytest.raises(ValueError, match="pos_embed=False"):
        AnoDFDNetConfig(rank_scales=(1.0,), decide_scale=0.5)
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        AnoDFDNetConfig(pos_embed=False, decide_scale=2.0)
