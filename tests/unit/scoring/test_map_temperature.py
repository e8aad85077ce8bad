"""The calibrated map temperature and the base preset's leaky head: the stored uint8 map keeps the ranking the
model's logits hold, without changing a decision at 0.5."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from anodet_core.models import create_model
from anodet_core.models.anodfdnet import AnoDFDNetConfig
from anodet_core.registry.model_store import ModelCard, build
from anodet_core.scoring.calibration import TEMPERATURES, calibrate, fit_map_temperature
from anodet_core.training import PairArrays


class _Logits(torch.nn.Module):
    """A paired 'model' whose logit map is given per sample (the validation index is read from cur's pixel)."""

    def __init__(self, logits: np.ndarray, temperature: float = 1.0) -> None:
        super().__init__()
        self.logits = torch.from_numpy(logits.astype(np.float32))
        self.cfg = AnoDFDNetConfig(map_temperature=temperature)

    def forward_logits(self, cur: torch.Tensor, his: torch.Tensor) -> torch.Tensor:
        idx = torch.round((cur[:, 0, 0, 0] + 1) * 127.5).long()  # to_input maps uint8 v to v / 127.5 - 1
        return self.logits[idx][:, None]

    def forward(self, cur: torch.Tensor, his: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward_logits(cur, his) / self.cfg.map_temperature)


def _val(n: int, size: int = 32) -> tuple[PairArrays, np.ndarray]:
    cur = np.zeros((n, size, size, 3), np.uint8)
    cur[:, 0, 0, 0] = np.arange(n)  # the sample's index, read back by _Logits
    mask = np.zeros((n, size, size), np.uint8)
    mask[: n // 2, 8:16, 8:16] = 1
    return PairArrays([f"p{i}" for i in range(n)], cur, cur.copy(), mask, sizes=[(size, size)] * n), mask.astype(bool)


def test_a_temperature_is_fitted_when_uint8_maps_would_tie_the_low_logits():
    # background logits near -14, anomalies near -9: both are 0 in a uint8 sigmoid map at T = 1 (pixel AUC 0.5),
    # though the logits separate them perfectly; a temperature must be chosen that keeps them apart
    rng = np.random.default_rng(0)
    val, mask = _val(8)
    logits = np.where(mask, -9.0, -14.0) + rng.normal(0, 0.3, mask.shape)
    model = _Logits(logits)
    t = fit_map_temperature(model, val)
    assert t > 1.0 and t in TEMPERATURES
    assert np.round(255 / (1 + np.exp(9.0))) == 0  # at T = 1 the anomalies are stored as 0, like the background
    cal = calibrate(model, val)
    assert cal.map_temperature == t and model.cfg.map_temperature == t and cal.config() == {"map_temperature": t}
    stored = np.round(model(torch.from_numpy(val.cur).permute(0, 3, 1, 2).float() / 127.5 - 1, None).numpy() * 255)
    assert stored[:, 0][mask].min() > stored[:, 0][~mask].max()  # the stored levels keep the order


def test_no_temperature_when_the_logits_already_fill_the_levels():
    val, mask = _val(8)
    model = _Logits(np.where(mask, 3.0, -3.0))  # sigmoid levels 242 vs 12: nothing to gain from a temperature
    assert fit_map_temperature(model, val) == 1.0
    cal = calibrate(model, val)
    assert cal.map_temperature == 1.0 and cal.config() == {}  # the default: the card's config stays as it was


def test_models_without_a_logit_temperature_are_calibrated_as_before():
    val, mask = _val(6)

    class Plain(torch.nn.Module):
        def forward(self, cur: torch.Tensor, his: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(np.where(mask, 0.9, 0.1).astype(np.float32))[: len(cur), None]

    cal = calibrate(Plain(), val)
    assert cal.map_temperature is None and cal.config() == {}


def test_temperature_keeps_every_decision_at_05_and_reaches_the_card():
    torch.manual_seed(0)
    m = create_model("anodfdnet", preset="base", pretrained=False).eval()
    cur, his = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        logits = m.forward_logits(cur, his)
        p1 = m(cur, his)
        m.cfg = dataclasses.replace(m.cfg, map_temperature=3.0)
        p3 = m(cur, his)
    assert torch.allclose(p3, torch.sigmoid(logits / 3.0)) and not torch.allclose(p1, p3)
    assert torch.equal(p1 > 0.5, p3 > 0.5)
    # a card's config rebuilds the model with its temperature
    card = ModelCard(name="anodfdnet", arch="anodfdnet", preset="base", config={"map_temperature": 3.0, "pretrained": False})
    assert build(card).cfg.map_temperature == 3.0
    with pytest.raises(ValueError, match="map_temperature"):
        AnoDFDNetConfig(map_temperature=0.0)


def test_base_head_is_leaky_and_loads_relu_trained_weights():
    base = create_model("anodfdnet", preset="base", pretrained=False)
    relu = create_model("anodfdnet", preset="base", pretrained=False, head_slope=0.0)
    assert isinstance(base.decoder.last[0][2], torch.nn.LeakyReLU) and base.decoder.last[0][2].negative_slope == 0.01
    assert isinstance(relu.decoder.last[0][2], torch.nn.ReLU)
    base.load_state_dict(relu.state_dict(), strict=True)  # same tensors: the shipped ReLU-trained weights load
    # with every head unit off the ReLU logit is the bias whatever the input; the leak still orders the inputs
    for m in (base, relu):
        m.eval()
        with torch.no_grad():
            m.decoder.last[0][1].bias.fill_(-50.0)  # BN shift: every head unit below zero
            m.decoder.last[1].weight.fill_(-0.01)
    cur = torch.rand(2, 3, 64, 64) * 2 - 1
    his = torch.stack([cur[0], torch.rand(3, 64, 64) * 2 - 1])
    with torch.no_grad():
        z_relu, z_leak = relu.forward_logits(cur, his), base.forward_logits(cur, his)
    assert z_relu.unique().numel() == 1  # the plateau: one value for every pixel of both pairs
    assert z_leak.unique().numel() > 100
    with pytest.raises(ValueError, match="head_slope"):
        AnoDFDNetConfig(head_slope=1.5)
