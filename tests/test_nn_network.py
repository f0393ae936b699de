"""SupermaskNet: selections, and the cached effective weights used for cheap evaluation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from impress_lightning.nn import Combine, Dense, Impression, LearnMask, SupermaskConv2d, SupermaskLinear, SupermaskNet, TopK


def make_net(capacity: int = 4, seed: int = 0, cache_size: int = 2) -> SupermaskNet:
    body = torch.nn.Sequential(SupermaskConv2d(3, 6, 3, bank_capacity=capacity, seed=seed), torch.nn.ReLU(),
                               torch.nn.Flatten(), SupermaskLinear(6 * 4 * 4, 5, bank_capacity=capacity,
                                                                   seed=seed + 1))
    return SupermaskNet(body, cache_size=cache_size)


def fill(net: SupermaskNet, n: int, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for layer in net.layers:
            layer.bank.add(torch.rand(layer.weight.shape, generator=gen) < 0.3)


class CountCalls:
    """Counts how often SupermaskNet materialises effective weights (to observe cache hits)."""

    def __init__(self, net: SupermaskNet) -> None:
        self.calls, self._inner = 0, net.effective_weights

    def __call__(self, selection):
        self.calls += 1
        return self._inner(selection)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(0))


def test_rejects_backbone_without_supermask_layers() -> None:
    with pytest.raises(ValueError, match="to_supermask"):
        SupermaskNet(torch.nn.Sequential(torch.nn.Linear(3, 3)))


def test_selection_outputs_match_manual_forward(x: torch.Tensor) -> None:
    net = make_net()
    fill(net, 2)
    conv, lin = net.layers

    def manual(wc: torch.Tensor, wl: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.relu(F.conv2d(x, wc)).flatten(1), wl)

    torch.testing.assert_close(net(x, Dense()), manual(conv.weight, lin.weight))
    torch.testing.assert_close(net(x, Impression(1)),
                               manual(conv.weight * conv.bank.mask(1), lin.weight * lin.bank.mask(1)))
    rule = TopK(0.2)
    torch.testing.assert_close(net(x, LearnMask(rule)),
                               manual(conv.weight * rule(conv.scores), lin.weight * rule(lin.scores)))
    # the layers' own weights are untouched by the swap
    assert torch.equal(conv.weight.abs(), torch.full_like(conv.weight, conv.magnitude))


@pytest.mark.parametrize("selection", [Impression(0), Combine(torch.tensor([0.7, -0.2, 1.1]))],
                         ids=["impression", "combine"])
def test_cached_forward_equals_uncached(x: torch.Tensor, selection) -> None:
    net = make_net()
    fill(net, 3)
    with torch.no_grad():
        plain = net(x, selection)
        first = net(x, selection, cache_key="t")
        second = net(x, selection, cache_key="t")
    assert torch.equal(plain, first) and torch.equal(first, second)


def test_cache_is_used_only_without_grad(x: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    net = make_net()
    fill(net, 2)
    counter = CountCalls(net)
    monkeypatch.setattr(net, "effective_weights", counter)
    alpha = torch.nn.Parameter(torch.full((2, 2), 0.5))
    with torch.no_grad():
        net(x, Combine(alpha), cache_key=0)
        net(x, Combine(alpha), cache_key=0)
    assert counter.calls == 1
    out = net(x, Combine(alpha), cache_key=0)  # gradient recorded: never served from the cache
    assert counter.calls == 2 and out.requires_grad
    out.sum().backward()
    assert alpha.grad is not None


def test_cache_invalidated_by_in_place_alpha_update(x: torch.Tensor) -> None:
    net = make_net()
    fill(net, 3)
    alpha = torch.nn.Parameter(torch.full((2, 3), 1 / 3))
    opt = torch.optim.SGD([alpha], lr=0.5)
    with torch.no_grad():
        before = net(x, Combine(alpha), cache_key=1)
    net(x, Combine(alpha)).square().mean().backward()
    opt.step()  # changes α in place: same tensor object, new values
    with torch.no_grad():
        after = net(x, Combine(alpha), cache_key=1)
        expected = net(x, Combine(alpha))
    assert not torch.allclose(before, after)
    assert torch.equal(after, expected)


def test_cache_invalidated_when_bank_changes(x: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    net = make_net()
    fill(net, 2)
    counter = CountCalls(net)
    monkeypatch.setattr(net, "effective_weights", counter)
    alpha = torch.tensor([0.4, 0.9])
    with torch.no_grad():
        net(x, Combine(alpha), cache_key="a")
        fill(net, 1, seed=7)  # a mask added to every bank
        after_add = net(x, Combine(alpha), cache_key="a")
    assert counter.calls == 2  # recomputed, and still right
    assert torch.equal(after_add, net(x, Combine(alpha)))

    # stored bits rewritten by load_state_dict: the cached weights must follow the new masks
    other = make_net()
    fill(other, 3, seed=99)
    with torch.no_grad():
        stale = net(x, Impression(0), cache_key="b")
        net.load_state_dict(other.state_dict())
        reloaded = net(x, Impression(0), cache_key="b")
        combined = net(x, Combine(alpha), cache_key="a")
    assert not torch.allclose(stale, reloaded)
    assert torch.equal(reloaded, other(x, Impression(0)))
    assert torch.equal(combined, other(x, Combine(alpha)))


def test_cache_is_lru_with_bounded_size(x: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    net = make_net(cache_size=2)
    fill(net, 3)
    counter = CountCalls(net)
    monkeypatch.setattr(net, "effective_weights", counter)
    with torch.no_grad():
        for key in [0, 1, 0]:  # 0 and 1 computed, 0 hit
            net(x, Impression(key), cache_key=key)
        assert counter.calls == 2
        net(x, Impression(2), cache_key=2)  # evicts 1 (least recently used), keeps 0
        assert counter.calls == 3
        net(x, Impression(0), cache_key=0)
        assert counter.calls == 3
        net(x, Impression(1), cache_key=1)
        assert counter.calls == 4
        net.clear_cache()
        net(x, Impression(1), cache_key=1)
        assert counter.calls == 5


def test_only_finished_selections_can_be_cached(x: torch.Tensor) -> None:
    net = make_net()
    with torch.no_grad(), pytest.raises(ValueError, match="cached"):
        net(x, LearnMask(TopK(0.1)), cache_key=0)
