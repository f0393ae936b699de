"""Mask rules: exact top-k densities, ER densities, the threshold rule, and the straight-through gradient."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from impress_lightning.backbones import build_backbone
from impress_lightning.nn import LearnMask, SupermaskLinear, SupermaskNet, Threshold, TopK, er_density, threshold_mask, topk_mask

SHAPES = [(7, 13), (300, 784), (20, 3, 3, 3), (33, 17, 3, 3), (5, 160)]
DENSITIES = [0.01, 0.05, 0.1, 0.33, 0.5, 0.9, 1.0]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", DENSITIES)
def test_topk_keeps_exact_count_of_largest_magnitudes(shape: tuple[int, ...], density: float) -> None:
    scores = torch.randn(shape, generator=torch.Generator().manual_seed(len(shape) + int(density * 100)))
    mask = topk_mask(scores, density)
    numel = math.prod(shape)
    assert mask.shape == scores.shape
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert int(mask.sum()) == round(density * numel)
    kept, dropped = scores.abs()[mask.bool()], scores.abs()[~mask.bool()]
    if kept.numel() and dropped.numel():
        assert kept.min() >= dropped.max()  # the kept entries are the largest |score|


def test_topk_rule_uses_global_density_per_layer() -> None:
    rule = TopK(density=0.2)
    for shape in SHAPES:
        mask = rule(torch.randn(shape))
        assert int(mask.sum()) == round(0.2 * math.prod(shape))


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_topk_rejects_bad_density(bad: float) -> None:
    with pytest.raises(ValueError, match="density"):
        topk_mask(torch.randn(4, 4), bad)
    with pytest.raises(ValueError, match="density"):
        TopK(density=bad)


def test_topk_rejects_bad_er_scale() -> None:
    with pytest.raises(ValueError, match="er_scale"):
        TopK(er_scale=0.0)


def test_er_density_matches_hand_formula() -> None:
    # conv 3x3, 3 -> 20 channels: s * (20 + 3) / (20 * 3 * 3 * 3)
    assert er_density((20, 3, 3, 3), 1.0) == pytest.approx(23 / 540)
    assert er_density((20, 3, 3, 3), 2.5) == pytest.approx(2.5 * 23 / 540)
    # linear 160 -> 5: s * (5 + 160) / (5 * 160)
    assert er_density((5, 160), 2.0) == pytest.approx(2.0 * 165 / 800)
    # capped at 0.5
    assert er_density((5, 160), 10.0) == 0.5
    # conv 3x3, 80 -> 160: s * 240 / (160 * 80 * 9)
    assert er_density((160, 80, 3, 3), 3.0) == pytest.approx(3.0 * 240 / 115200)


@pytest.mark.parametrize("scale", [0.5, 2.0, 10.0])
def test_er_topk_on_gem_resnet18_keeps_er_count_per_layer(scale: float) -> None:
    body = build_backbone("gem_resnet18", (3, 32, 32), 5, bank_capacity=0, num_tasks=1)
    layers = SupermaskNet(body).layers
    assert len(layers) == 21
    rule = TopK(er_scale=scale)
    densities = set()
    for layer in layers:
        shape = tuple(layer.weight.shape)
        c_out, c_in = shape[0], shape[1]
        kh, kw = shape[2:] if len(shape) == 4 else (1, 1)
        expected_density = min(0.5, scale * (c_out + c_in) / (c_out * c_in * kh * kw))
        assert rule.layer_density(shape) == pytest.approx(expected_density)
        mask = rule(layer.scores)
        assert int(mask.sum()) == round(er_density(shape, scale) * layer.weight.numel())
        densities.add(round(expected_density, 6))
    assert len(densities) > 3  # ER really gives different layers different densities


def test_threshold_keeps_exactly_nonnegative_scores() -> None:
    scores = torch.randn(50, 40)
    scores[0, :10] = 0.0  # exact zeros are kept (>=)
    scores[1, :10] = -0.0
    mask = threshold_mask(scores)
    assert torch.equal(mask.bool(), scores >= 0)
    assert torch.equal(Threshold()(scores), mask)
    assert torch.equal(Threshold(0.5)(scores).bool(), scores >= 0.5)
    assert Threshold().layer_density((3, 4)) is None


@pytest.mark.parametrize("rule", [TopK(0.3), Threshold()], ids=["topk", "threshold"])
def test_straight_through_gradient_reaches_scores_only(rule) -> None:
    torch.manual_seed(0)
    net = SupermaskNet(torch.nn.Sequential(SupermaskLinear(12, 9, seed=1), torch.nn.ReLU(),
                                           SupermaskLinear(9, 4, seed=2)))
    x, y = torch.randn(16, 12), torch.randint(0, 4, (16,))
    F.cross_entropy(net(x, LearnMask(rule)), y).backward()

    # Manual computation: the same masks as constants, effective weights as autograd leaves.
    l1, l2 = net.layers
    eff1 = (l1.weight * rule(l1.scores.detach())).requires_grad_()
    eff2 = (l2.weight * rule(l2.scores.detach())).requires_grad_()
    F.cross_entropy(F.linear(torch.relu(F.linear(x, eff1)), eff2), y).backward()

    for layer, eff in [(l1, eff1), (l2, eff2)]:
        assert layer.scores.grad is not None
        # straight-through: d loss / d mask = (d loss / d W_eff) ⊙ W; top-k ranks |scores| inside the graph,
        # so its scores get that times sign(score), the threshold rule gets it unchanged
        to_mask = eff.grad * layer.weight
        expected = to_mask * layer.scores.detach().sign() if isinstance(rule, TopK) else to_mask
        torch.testing.assert_close(layer.scores.grad, expected, rtol=1e-6, atol=1e-8)
        assert layer.scores.grad.abs().sum() > 0
        # gradient also reaches pruned entries (that is what lets the mask change)
        pruned = rule(layer.scores.detach()) == 0
        assert layer.scores.grad[pruned].abs().sum() > 0
        assert layer.weight.grad is None and not layer.weight.requires_grad
        assert all(p is not layer.weight for p in net.parameters())
