"""Backbones: layer and weight counts, torchvision conversion, and the registry's errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from impress_lightning.backbones import available_backbones, build_backbone, plain_backbone
from impress_lightning.nn import Dense, SupermaskLayer, SupermaskNet, TaskBatchNorm


def count(module: nn.Module, kinds: tuple[type, ...]) -> int:
    return sum(isinstance(m, kinds) for m in module.modules())


@pytest.mark.parametrize("name, shape, outputs, layers, weights", [
    ("lenet_300_100", (1, 28, 28), 10, 3, 784 * 300 + 300 * 100 + 100 * 10),
    ("fc1024", (1, 28, 28), 10, 3, 784 * 1024 + 1024 * 1024 + 1024 * 10),
    ("gem_resnet18", (3, 32, 32), 5, 21, None),
])
def test_layer_and_weight_counts(name: str, shape: tuple[int, ...], outputs: int, layers: int,
                                 weights: int | None) -> None:
    net = SupermaskNet(build_backbone(name, shape, outputs, bank_capacity=1, num_tasks=2))
    assert net.num_layers == layers
    total = sum(layer.weight.numel() for layer in net.layers)
    if weights is not None:
        assert total == weights
    else:  # GEM ResNet-18 with a 5-way head: ≈ 1.09 M weights
        assert abs(total - 1.09e6) < 0.005e6
    x = torch.randn(2, *shape)
    with torch.no_grad():
        assert net(x, Dense(), bn_task=0).shape == (2, outputs)


def test_gem_resnet18_widths() -> None:
    net = SupermaskNet(build_backbone("gem_resnet18", (3, 32, 32), 5, bank_capacity=0, num_tasks=1))
    out_channels = sorted({layer.weight.shape[0] for layer in net.layers[:-1]})
    assert out_channels == [20, 40, 80, 160]
    assert tuple(net.layers[0].weight.shape) == (20, 3, 3, 3)  # 3x3 stem
    assert tuple(net.layers[-1].weight.shape) == (5, 160)
    assert count(net, (nn.MaxPool2d,)) == 0
    assert count(net, (TaskBatchNorm,)) == 20  # one per conv


@pytest.mark.parametrize("model", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow)])
def test_torchvision_resnet_conversion(model: str) -> None:
    torch.manual_seed(0)
    name = f"torchvision.{model}"
    plain = plain_backbone(name, (3, 64, 64), 10)
    plain_layers = count(plain, (nn.Linear, nn.Conv2d))
    plain_bns = count(plain, (nn.BatchNorm2d,))
    body = build_backbone(name, (3, 64, 64), 10, bank_capacity=2, num_tasks=3)
    net = SupermaskNet(body)

    assert count(body, (nn.Linear, nn.Conv2d)) == 0  # every Linear/Conv2d was replaced
    assert net.num_layers == plain_layers
    assert count(body, (nn.BatchNorm1d, nn.BatchNorm2d)) == 0
    assert count(body, (TaskBatchNorm,)) == plain_bns
    assert all(getattr(layer, "bias", None) is None for layer in net.layers)
    assert {n.rsplit(".", 1)[-1] for n, _ in body.named_parameters()} == {"scores"}  # no bias, no γ/β
    assert all(tuple(layer.weight.shape) == tuple(ref.weight.shape) for layer, ref in
               zip(net.layers, [m for m in plain.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]))

    x = torch.randn(2, 3, 64, 64)
    plain.eval()
    net.eval()
    with torch.no_grad():
        assert net(x, Dense(), bn_task=1).shape == plain(x).shape == (2, 10)


def test_same_seed_same_backbone() -> None:
    a = build_backbone("lenet_300_100", (1, 28, 28), 10, bank_capacity=1, num_tasks=1, seed=4)
    b = build_backbone("lenet_300_100", (1, 28, 28), 10, bank_capacity=1, num_tasks=1, seed=4)
    c = build_backbone("lenet_300_100", (1, 28, 28), 10, bank_capacity=1, num_tasks=1, seed=5)
    layers = lambda m: [x for x in m.modules() if isinstance(x, SupermaskLayer)]  # noqa: E731
    assert all(torch.equal(p.weight, q.weight) for p, q in zip(layers(a), layers(b)))
    assert not any(torch.equal(p.weight, q.weight) for p, q in zip(layers(a), layers(c)))
    # different layers of one backbone draw different signs
    first, second = layers(a)[1], layers(a)[2]
    assert not torch.equal(first.weight[:10, :10].sign(), second.weight[:10, :10].sign())


def test_unknown_backbones_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="backbone='nope' is unknown"):
        build_backbone("nope", (1, 28, 28), 10, bank_capacity=1, num_tasks=1)
    with pytest.raises(ValueError, match="torchvision has no model"):
        build_backbone("torchvision.not_a_model", (3, 32, 32), 10, bank_capacity=1, num_tasks=1)
    names = available_backbones()
    assert {"lenet_300_100", "fc1024", "gem_resnet18", "torchvision.resnet18"} <= set(names)
