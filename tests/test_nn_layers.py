"""Supermask layers: frozen signed-constant weights, score initialisation, and what each selection uses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from impress_lightning.nn import Dense, Impression, LearnMask, SupermaskConv2d, SupermaskLinear, TopK, signed_constant, to_supermask

LAYERS = {
    "linear": lambda seed: SupermaskLinear(37, 11, bank_capacity=2, seed=seed),
    "conv": lambda seed: SupermaskConv2d(6, 10, 3, padding=1, bank_capacity=2, seed=seed),
    "conv_rect": lambda seed: SupermaskConv2d(4, 8, (3, 5), stride=2, bank_capacity=2, seed=seed),
}
FAN_IN = {"linear": 37, "conv": 6 * 3 * 3, "conv_rect": 4 * 3 * 5}


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_signed_constant_magnitude_and_signs(kind: str) -> None:
    layer = LAYERS[kind](0)
    assert layer.fan_in == FAN_IN[kind]
    expected = math.sqrt(2.0 / FAN_IN[kind])
    torch.testing.assert_close(layer.weight.abs(), torch.full_like(layer.weight, expected), rtol=0, atol=1e-7)
    positive = (layer.weight > 0).float().mean().item()
    assert 0.3 < positive < 0.7  # both signs, roughly balanced


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_signed_constant_is_seeded(kind: str) -> None:
    assert torch.equal(LAYERS[kind](5).weight, LAYERS[kind](5).weight)
    assert not torch.equal(LAYERS[kind](5).weight, LAYERS[kind](6).weight)
    assert torch.equal(LAYERS[kind](5).scores, LAYERS[kind](5).scores)


def test_signed_constant_function() -> None:
    w = signed_constant((50, 20), 20, seed=3)
    assert torch.equal(w.abs(), torch.full((50, 20), math.sqrt(2 / 20)))
    assert torch.equal(w, signed_constant((50, 20), 20, seed=3))


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_weight_is_frozen_buffer_and_only_scores_train(kind: str) -> None:
    layer = LAYERS[kind](0)
    assert "weight" in dict(layer.named_buffers())
    assert not layer.weight.requires_grad
    assert [n for n, _ in layer.named_parameters()] == ["scores"]
    assert not hasattr(layer, "bias") or layer.bias is None
    x = torch.randn(2, 37) if kind == "linear" else torch.randn(2, layer.in_channels, 9, 9)
    out = layer.apply_weight(x, layer.effective_weight(LearnMask(TopK(0.5)), 0))
    out.square().sum().backward()
    assert layer.weight.grad is None
    assert layer.scores.grad is not None


def test_scores_kaiming_uniform_bounds() -> None:
    layer = SupermaskLinear(400, 300, seed=1)
    bound = 1 / math.sqrt(400)
    assert layer.scores.abs().max() <= bound
    assert layer.scores.abs().max() > 0.95 * bound  # really spans the range
    assert abs(layer.scores.mean().item()) < 0.05 * bound  # centred on zero
    old = layer.scores.detach().clone()
    layer.reset_scores(2)
    assert not torch.equal(old, layer.scores)


def test_selections_give_expected_effective_weights() -> None:
    layer = SupermaskConv2d(3, 4, 3, bank_capacity=2, seed=0)
    mask = torch.rand(layer.weight.shape) < 0.3
    layer.bank.add(mask)
    assert torch.equal(layer.effective_weight(Dense(), 0), layer.weight)
    assert torch.equal(layer.effective_weight(Impression(0), 0), layer.weight * mask.float())
    learned = layer.effective_weight(LearnMask(TopK(0.25)), 0)
    assert int((learned != 0).sum()) == round(0.25 * layer.weight.numel())
    with pytest.raises(TypeError, match="selection"):
        layer.effective_weight("task0", 0)  # type: ignore[arg-type]


def test_conv_and_linear_apply_weight_like_torch() -> None:
    conv = SupermaskConv2d(4, 8, (3, 5), stride=2, padding=1, seed=0)
    x = torch.randn(2, 4, 11, 13)
    w = torch.randn(conv.weight.shape)
    torch.testing.assert_close(conv.apply_weight(x, w), F.conv2d(x, w, None, 2, 1))
    lin = SupermaskLinear(5, 3)
    x = torch.randn(4, 5)
    torch.testing.assert_close(lin(x), x @ lin.weight.t())


def test_conversion_is_seeded_per_model() -> None:
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    a = to_supermask(plain, bank_capacity=1, num_tasks=1, seed=0)
    b = to_supermask(plain, bank_capacity=1, num_tasks=1, seed=0)
    c = to_supermask(plain, bank_capacity=1, num_tasks=1, seed=1)
    for name in ["0.weight", "2.weight"]:
        assert torch.equal(a.state_dict()[name], b.state_dict()[name])
        assert not torch.equal(a.state_dict()[name], c.state_dict()[name])
    assert isinstance(plain[0], torch.nn.Conv2d)  # not modified in place by default


def test_conversion_rejects_unsupported_padding_mode() -> None:
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="padding_mode"):
        to_supermask(plain, bank_capacity=1, num_tasks=1)
