"""TaskBatchNorm: non-affine BN with one row of running statistics per task."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from impress_lightning.nn import Dense, SupermaskNet, TaskBatchNorm, to_supermask

EPS = 1e-5


def make_net(num_tasks: int = 3) -> SupermaskNet:
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 2, bias=False))
    return SupermaskNet(to_supermask(plain, bank_capacity=1, num_tasks=num_tasks, seed=0))


def conv_out(net: SupermaskNet, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, net.layers[0].weight)


def head(net: SupermaskNet, normalised: torch.Tensor) -> torch.Tensor:
    return F.linear(torch.relu(normalised).flatten(1), net.layers[1].weight)


def bn(net: SupermaskNet) -> TaskBatchNorm:
    return net.batchnorms[0]


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(0)) * 2 + 0.5


def test_bn_is_non_affine_with_a_row_per_task() -> None:
    net = make_net(num_tasks=3)
    norm = bn(net)
    assert list(norm.parameters()) == []
    assert norm.task_mean.shape == norm.task_var.shape == (3, 4)
    assert set(norm.state_dict()) == {"task_mean", "task_var"}
    assert "affine=False" in repr(norm)


def test_training_on_a_task_updates_only_its_row(x: torch.Tensor) -> None:
    net = make_net().train()
    out = net(x, Dense(), bn_task=1)
    h = conv_out(net, x)
    batch_mean, batch_var = h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=True)
    norm = bn(net)
    torch.testing.assert_close(norm.task_mean[1], 0.1 * batch_mean)
    torch.testing.assert_close(norm.task_var[1], 0.9 + 0.1 * batch_var)
    for row in (0, 2):
        assert torch.equal(norm.task_mean[row], torch.zeros(4))
        assert torch.equal(norm.task_var[row], torch.ones(4))
    # training mode normalises with the batch's statistics
    biased = h.var(dim=(0, 2, 3), unbiased=False)
    normalised = (h - batch_mean[None, :, None, None]) / torch.sqrt(biased[None, :, None, None] + EPS)
    torch.testing.assert_close(out, head(net, normalised), rtol=1e-4, atol=1e-5)
    assert norm.stats_in_use is None  # cleared after the forward pass
    assert all(layer.weight_in_use is None for layer in net.layers)


def test_eval_uses_the_stored_row_and_changes_nothing(x: torch.Tensor) -> None:
    net = make_net()
    norm = bn(net)
    with torch.no_grad():
        norm.task_mean[2] = torch.tensor([0.1, -0.3, 0.5, 2.0])
        norm.task_var[2] = torch.tensor([1.5, 0.2, 3.0, 0.7])
    saved = {k: v.clone() for k, v in norm.state_dict().items()}
    net.eval()
    with torch.no_grad():
        out = net(x, Dense(), bn_task=2)
        other = net(x, Dense(), bn_task=0)
    h = conv_out(net, x)
    mean, var = saved["task_mean"][2], saved["task_var"][2]
    expected = head(net, (h - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + EPS))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out, other)  # a different task's statistics give a different output
    for k, v in norm.state_dict().items():
        assert torch.equal(v, saved[k])


@pytest.mark.parametrize("training", [True, False])
def test_batch_mode_uses_batch_statistics_and_changes_nothing(x: torch.Tensor, training: bool) -> None:
    net = make_net().train(training)
    norm = bn(net)
    saved = {k: v.clone() for k, v in norm.state_dict().items()}
    out = net(x, Dense(), bn_task="batch")
    h = conv_out(net, x)
    mean, var = h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=False)
    expected = head(net, (h - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + EPS))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    for k, v in norm.state_dict().items():
        assert torch.equal(v, saved[k])


@pytest.mark.parametrize("bad", [None, "0", 1.0])
def test_missing_bn_task_is_a_clear_error(x: torch.Tensor, bad) -> None:
    with pytest.raises(ValueError, match="bn_task"):
        make_net()(x, Dense(), bn_task=bad)


def test_unknown_task_row_is_an_error(x: torch.Tensor) -> None:
    net = make_net(num_tasks=3)
    with pytest.raises(IndexError, match="task 3"):
        net(x, Dense(), bn_task=3)
    # the failed pass left no weight or statistics behind for a later plain call of the backbone
    assert all(layer.weight_in_use is None for layer in net.layers) and bn(net).stats_in_use is None


def test_bn_free_network_needs_no_bn_task() -> None:
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    net = SupermaskNet(to_supermask(plain, bank_capacity=1, num_tasks=2))
    assert net(torch.randn(2, 3, 4), Dense()).shape == (2, 3)
