"""Table I baselines Unet-cat and FC-Siam-diff (fast, CPU only)."""

from __future__ import annotations

import pytest
import torch

from anodet_core.models import create_model, list_models, list_presets
from anodet_core.models.fc_siam_diff import FCSiamDiff, FCSiamDiffConfig
from anodet_core.models.unet_cat import UNetCat, UNetCatConfig

NAMES = ("unet_cat", "fc_siam_diff")
PARAMS = {
    ("unet_cat", "paper"): 31_039_361,
    ("unet_cat", "lite"): 1_943_009,
    ("fc_siam_diff", "paper"): 1_350_001,
    ("fc_siam_diff", "lite"): 338_617,
}
ANODFDNET_LITE_PARAMS = 2_301_184


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _pair(b: int, size: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cur, his = (torch.rand(b, 3, size, size, generator=g) * 2 - 1 for _ in range(2))
    return cur, his


@pytest.fixture(scope="module", params=NAMES)
def lite(request: pytest.FixtureRequest) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(request.param, preset="lite").eval()


def test_registered_with_presets() -> None:
    for name in NAMES:
        assert name in list_models()
        assert set(list_presets(name)) == {"paper", "lite"}
    assert isinstance(create_model("unet_cat"), UNetCat)
    assert isinstance(create_model("fc_siam_diff"), FCSiamDiff)
    assert create_model("unet_cat").cfg == UNetCatConfig()  # default preset is "paper"
    assert create_model("fc_siam_diff").cfg == FCSiamDiffConfig()
    with pytest.raises(ValueError, match="lite"):
        create_model("unet_cat", preset="huge")
    with pytest.raises(ValueError, match="widths"):
        create_model("fc_siam_diff", preset="lite", width=(1, 2, 3, 4))
    with pytest.raises(ValueError, match="bottleneck"):
        create_model("fc_siam_diff", bottleneck="cur")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("preset", ["paper", "lite"])
def test_param_count_and_output(name: str, preset: str) -> None:
    torch.manual_seed(0)
    m = create_model(name, preset=preset).eval()
    n = _n_params(m)
    print(f"{name}/{preset}: {n:,} params")
    assert n == PARAMS[name, preset]
    if preset == "lite":
        assert n <= ANODFDNET_LITE_PARAMS
    with torch.inference_mode():
        y = m(*_pair(2 if preset == "lite" else 1))
    assert y.shape == ((2 if preset == "lite" else 1), 1, 256, 256)
    assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1


def test_fc_siam_diff_paper_matches_reference_count() -> None:
    # The reference code's 2-class head: 1,350,146 params (the published FC-Siam-diff size).
    assert _n_params(create_model("fc_siam_diff", out_chans=2)) == 1_350_146


def test_forward_is_sigmoid_of_logits(lite: torch.nn.Module) -> None:
    cur, his = _pair(2, 64)
    with torch.inference_mode():
        torch.testing.assert_close(lite(cur, his), torch.sigmoid(lite.forward_logits(cur, his)))


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_other_sizes(lite: torch.nn.Module, size: tuple[int, int]) -> None:
    cur, his = torch.zeros(1, 3, *size), torch.ones(1, 3, *size)
    with torch.inference_mode():
        assert lite(cur, his).shape == (1, 1, *size)


def test_fc_siam_diff_symmetric_eval() -> None:
    torch.manual_seed(0)
    m = create_model("fc_siam_diff", preset="lite").eval()
    cur, his = _pair(2, 64)
    with torch.inference_mode():
        torch.testing.assert_close(m(cur, his), m(his, cur), atol=1e-6, rtol=0)


def test_fc_siam_diff_symmetric_train_without_dropout() -> None:
    # cur and his share one 2B batch, so batch-statistics BN keeps the map symmetric.
    torch.manual_seed(0)
    m = create_model("fc_siam_diff", preset="lite", dropout=0.0).train()
    cur, his = _pair(2, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(cur, his), m(his, cur), atol=1e-5, rtol=0)


def test_fc_siam_diff_reference_bottleneck_is_asymmetric() -> None:
    # Train mode (batch-stat BN): an untrained net in eval mode squashes the 4x4 bottleneck
    # towards a constant, which would hide the asymmetry.
    torch.manual_seed(0)
    m = create_model("fc_siam_diff", preset="lite", bottleneck="his", dropout=0.0).train()
    cur, his = _pair(2, 64)
    with torch.no_grad():
        assert (m(cur, his) - m(his, cur)).abs().max() > 1e-3


def test_unet_cat_sees_order() -> None:
    torch.manual_seed(0)
    m = create_model("unet_cat", preset="lite").eval()
    assert m.stem[0].in_channels == 6
    cur, his = _pair(1, 64)
    with torch.inference_mode():
        assert (m(cur, his) - m(his, cur)).abs().max() > 1e-3


def test_dropout_present_in_fc_siam_diff() -> None:
    m = create_model("fc_siam_diff", preset="paper")
    drops = [d for d in m.modules() if isinstance(d, torch.nn.Dropout2d)]
    assert len(drops) == 10 + 9 and all(d.p == 0.2 for d in drops)  # every conv but the last
    assert sum(isinstance(c, torch.nn.ConvTranspose2d) for c in m.decoder.modules()) == 4 + 10


@pytest.mark.parametrize("name", NAMES)
def test_train_step_backward(name: str) -> None:
    torch.manual_seed(0)
    m = create_model(name, preset="lite").train()
    cur, his = _pair(2, 64)
    target = torch.zeros(2, 1, 64, 64)
    target[:, :, 20:30, 20:30] = 1
    loss = torch.nn.functional.binary_cross_entropy_with_logits(m.forward_logits(cur, his), target)
    loss.backward()
    named = list(m.named_parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in named), [
        n for n, p in named if p.grad is None
    ]


def test_bf16_autocast(lite: torch.nn.Module) -> None:
    cur, his = _pair(2, 128)
    with torch.inference_mode():
        ref = lite(cur, his)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = lite(cur, his)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.05


def test_channels_last_matches(lite: torch.nn.Module) -> None:
    cur, his = _pair(2, 64)
    name = {UNetCat: "unet_cat", FCSiamDiff: "fc_siam_diff"}[type(lite)]
    m = create_model(name, preset="lite").eval()
    m.load_state_dict(lite.state_dict())
    m = m.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = lite(cur, his)
        out = m(cur.to(memory_format=torch.channels_last), his.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_bad_inputs_rejected(lite: torch.nn.Module) -> None:
    with pytest.raises(ValueError):
        lite(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 48))
    with pytest.raises(ValueError):
        lite(torch.zeros(1, 3, 60, 60), torch.zeros(1, 3, 60, 60))
