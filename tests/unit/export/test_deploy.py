"""The deploy form (anodet_core.export.deploy): the same function as the torch model, in convolutions only."""

import pytest
import torch
import torch.nn as nn

from anodet_core.export.deploy import ChannelsFirstTransformer, PhaseConvTranspose, deploy_form
from anodet_core.models import create_model
from anodet_core.models.anodfdnet import DifferenceTransformer


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial running statistics and affine terms, so that a wrong BatchNorm fold shows."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)


@pytest.mark.parametrize("bias,bn", [(False, True), (True, False), (True, True)])
def test_phase_conv_equals_the_stride2_transposed_conv(bias, bn):
    torch.manual_seed(0)
    seq = nn.Sequential(nn.ConvTranspose2d(5, 7, 4, 2, 1, bias=bias), *([nn.BatchNorm2d(7)] if bn else [])).eval()
    _randomise_bn(seq)
    x = torch.randn(2, 5, 6, 9)  # not square: the two axes' phases must not be swapped
    phase = PhaseConvTranspose(seq[0], seq[1] if bn else None)
    with torch.no_grad():
        ref, out = seq(x), phase(x)
    assert out.shape == ref.shape == (2, 7, 12, 18)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_phase_conv_refuses_other_transposed_convs():
    with pytest.raises(ValueError, match="stride-2 4x4"):
        PhaseConvTranspose(nn.ConvTranspose2d(4, 4, 3, 2, 1))


def test_stride1_and_unsupported_transposed_convs():
    torch.manual_seed(0)
    net = nn.Sequential(nn.ConvTranspose2d(3, 4, 3, 1, 1), nn.ReLU(), nn.ConvTranspose2d(4, 2, 3, 2, 1)).eval()
    dep = deploy_form(net)
    assert isinstance(dep[0], nn.Conv2d) and not isinstance(dep[0], nn.ConvTranspose2d)  # flipped-kernel conv
    assert isinstance(dep[2], nn.ConvTranspose2d)  # stride 2, 3x3: left as it is
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(dep(x), net(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset,extra", [("paper", {}), ("lite", {}), ("base", {"pretrained": False})])
def test_deploy_form_of_anodfdnet_is_the_same_function(preset, extra):
    torch.manual_seed(0)
    model = create_model("anodfdnet", preset=preset, **extra).eval()
    _randomise_bn(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    dep = deploy_form(model)
    assert isinstance(deploy_form(model, channels_first_transformer=True).transformer, ChannelsFirstTransformer)
    assert isinstance(dep.transformer, DifferenceTransformer)  # exports keep it (int8 accuracy)
    dep = deploy_form(model, channels_first_transformer=True)
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in dep.modules())
    assert isinstance(model.transformer, DifferenceTransformer)  # the model itself is untouched
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    cur = torch.rand(2, 3, 256, 256) * 2 - 1
    his = (cur + 0.1 * torch.randn_like(cur)).clamp(-1, 1)
    with torch.no_grad():
        ref, out = model.forward_logits(cur, his), dep.forward_logits(cur, his)
    scale = float(ref.abs().max())
    assert scale > 0
    torch.testing.assert_close(out, ref, atol=1e-5 * max(1.0, scale), rtol=1e-4)


def test_channels_first_transformer_with_a_position_embedding_at_another_grid():
    torch.manual_seed(0)
    model = create_model("anodfdnet", preset="lite").eval()  # lite: position embedding on, resampled off 16x16
    with torch.no_grad():
        model.transformer.pos_embed.normal_()
        x = torch.randn(2, model.cfg.latent_dim, 8, 12)
        torch.testing.assert_close(ChannelsFirstTransformer(model.transformer)(x), model.transformer(x),
                                   atol=1e-4, rtol=1e-4)
