"""α-combination: the lookup-table combined weight and its α-gradient against the naive formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from impress_lightning.nn import (
    Combine, Global, PerNeuron, SupermaskConv2d, SupermaskLinear, SupermaskNet, naive_combine,
)
from impress_lightning.nn.combine import MAX_PLANE_BITS

KS = [1, 3, 10, 20]


def make_net(k: int, seed: int = 0) -> SupermaskNet:
    """A conv + linear net (odd sizes) whose banks hold ``k`` random masks of mixed densities."""
    body = torch.nn.Sequential(SupermaskConv2d(3, 5, 3, bank_capacity=k, seed=seed), torch.nn.ReLU(),
                               torch.nn.Flatten(), SupermaskLinear(5 * 4 * 4, 7, bank_capacity=k, seed=seed + 1))
    net = SupermaskNet(body)
    gen = torch.Generator().manual_seed(seed)
    for j in range(k):
        for layer in net.layers:
            layer.bank.add(torch.rand(layer.weight.shape, generator=gen) < 0.1 + 0.8 * j / max(k, 1))
    return net


def naive_weights(net: SupermaskNet, alpha: torch.Tensor) -> list[torch.Tensor]:
    """The reference ``W ⊙ Σ_k α_k M_k`` per layer in float64, differentiable w.r.t. ``alpha``."""
    out = []
    for i, layer in enumerate(net.layers):
        k = alpha.shape[-1]
        masks = layer.bank.masks(k).view(k, *layer.weight.shape)
        coeffs = alpha[i] if alpha.dim() == 2 else alpha
        out.append(naive_combine(layer.weight.double(), masks, coeffs))
    return out


def random_alpha(net: SupermaskNet, k: int, granularity: str) -> torch.Tensor:
    shape = (net.num_layers, k) if granularity == "layer" else (k,)
    return torch.randn(shape, generator=torch.Generator().manual_seed(k), dtype=torch.float64)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("granularity", ["layer", "global"])
def test_combined_weight_and_alpha_gradient_match_naive(k: int, granularity: str) -> None:
    net = make_net(k)
    alpha64 = random_alpha(net, k, granularity).requires_grad_()
    alpha = alpha64.detach().float().requires_grad_()
    fast = net.effective_weights(Combine(alpha))
    slow = naive_weights(net, alpha64)
    upstream = [torch.randn(w.shape, dtype=torch.float64) for w in slow]
    for f, s in zip(fast, slow):
        assert f.shape == s.shape and f.dtype == torch.float32
        torch.testing.assert_close(f.double(), s.detach(), rtol=1e-5, atol=1e-6)
    sum((f.double() * g).sum() for f, g in zip(fast, upstream)).backward()
    sum((s * g).sum() for s, g in zip(slow, upstream)).backward()
    assert alpha.grad is not None and alpha.grad.shape == alpha.shape
    torch.testing.assert_close(alpha.grad.double(), alpha64.grad, rtol=1e-5, atol=1e-5)


def test_twenty_impressions_use_several_code_planes() -> None:
    net = make_net(20)
    planes = net.layers[0].code_planes(20)
    assert len(planes) == math.ceil(20 / MAX_PLANE_BITS) >= 2
    assert [(p.start, p.stop) for p in planes][-1][1] == 20


@pytest.mark.parametrize("granularity", ["layer", "global"])
def test_network_output_and_alpha_gradient_match_naive_forward(granularity: str) -> None:
    k = 10
    net = make_net(k, seed=3)
    x, y = torch.randn(6, 3, 6, 6), torch.randint(0, 7, (6,))
    alpha = random_alpha(net, k, granularity).float().requires_grad_()
    logits = net(x, Combine(alpha))
    F.cross_entropy(logits, y).backward()

    alpha64 = alpha.detach().double().requires_grad_()
    w_conv, w_lin = naive_weights(net, alpha64)
    ref = F.linear(torch.relu(F.conv2d(x.double(), w_conv)).flatten(1), w_lin)
    F.cross_entropy(ref, y).backward()
    torch.testing.assert_close(logits.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alpha.grad.double(), alpha64.grad, rtol=1e-4, atol=1e-6)
    for layer in net.layers:  # α is the only thing that learns
        assert layer.weight.grad is None and layer.scores.grad is None


def test_combine_uses_the_first_n_masks() -> None:
    net = make_net(5)
    alpha = torch.rand(net.num_layers, 3, dtype=torch.float64)
    for f, s in zip(net.effective_weights(Combine(alpha.float())), naive_weights(net, alpha)):
        torch.testing.assert_close(f.double(), s, rtol=1e-5, atol=1e-6)


def test_one_hot_alpha_reproduces_the_impression() -> None:
    from impress_lightning.nn import Impression

    net = make_net(4)
    alpha = torch.zeros(4)
    alpha[2] = 1.0
    for f, m in zip(net.effective_weights(Combine(alpha)), net.effective_weights(Impression(2))):
        assert torch.equal(f, m)


def test_more_coefficients_than_masks_is_an_error() -> None:
    net = make_net(3)
    with pytest.raises(IndexError, match="masks"):
        net.effective_weights(Combine(torch.ones(net.num_layers, 4)))


def per_neuron_alpha(net: SupermaskNet, k: int, layers: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """Per-neuron ``[out, k]`` coefficients on ``layers``, per-layer ``[k]`` elsewhere (float64)."""
    gen = torch.Generator().manual_seed(100 + k)
    shapes = PerNeuron(layers).layer_shapes([layer.weight.shape for layer in net.layers], k)
    return tuple(torch.randn(shape, generator=gen, dtype=torch.float64) for shape in shapes)


@pytest.mark.parametrize("k", [1, 3, 13])
@pytest.mark.parametrize("layers", [(-1,), (0, 1)])
def test_per_neuron_combine_and_gradient_match_a_naive_float64_formula(k: int, layers: tuple[int, ...]) -> None:
    net = make_net(k, seed=k)
    alpha64 = [a.requires_grad_() for a in per_neuron_alpha(net, k, layers)]
    alpha = [a.detach().float().requires_grad_() for a in alpha64]
    fast = net.effective_weights(Combine(tuple(alpha)))
    slow = []
    for layer, coeffs in zip(net.layers, alpha64):  # W[o] * sum_k a[o, k] M_k[o], written out per output row
        masks = layer.bank.masks(k).view(k, *layer.weight.shape).double()
        weight = layer.weight.double()
        if coeffs.dim() == 2:
            rows = [weight[o] * sum(coeffs[o, j] * masks[j, o] for j in range(k)) for o in range(weight.shape[0])]
            slow.append(torch.stack(rows))
        else:
            slow.append(weight * sum(coeffs[j] * masks[j] for j in range(k)))
    upstream = [torch.randn(w.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
                for i, w in enumerate(slow)]
    for f, s in zip(fast, slow):
        assert f.shape == s.shape and f.dtype == torch.float32
        torch.testing.assert_close(f.double(), s.detach(), rtol=1e-5, atol=1e-6)
    sum((f.double() * g).sum() for f, g in zip(fast, upstream)).backward()
    sum((s * g).sum() for s, g in zip(slow, upstream)).backward()
    for a, a64 in zip(alpha, alpha64):
        assert a.grad is not None and a.grad.shape == a64.shape
        torch.testing.assert_close(a.grad.double(), a64.grad, rtol=1e-5, atol=1e-5)


def test_per_neuron_rule_lays_out_rows_for_the_chosen_layers_only() -> None:
    shapes = [(300, 784), (100, 300), (10, 100)]
    slices = PerNeuron((-2, -1)).layout(shapes, 3)
    assert [s.shape for s in slices] == [(3,), (100, 3), (10, 3)]
    assert [s.offset for s in slices] == [0, 3, 303]
    assert [s.shape for s in Global().layout(shapes, 3)] == [(3,)] * 3 and Global().layout(shapes, 3)[2].offset == 0
    with pytest.raises(ValueError, match="PerNeuron.layers"):
        PerNeuron((5,)).layout(shapes, 3)
