"""The guard's finiteness check (sums, confirmed exactly when suspect) agrees with isfinite().all() on every
float format."""

from __future__ import annotations

import math

import pytest
import torch

from impress_lightning.callbacks.numerics import all_finite as exactly_finite
from impress_lightning.callbacks.numerics import checked_values


def all_finite(loss: torch.Tensor, learned: list[torch.Tensor]) -> bool:
    return all(map(math.isfinite, checked_values(loss, learned).tolist()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_checked_values_are_finite_exactly_when_everything_is(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    loss = torch.tensor(0.5)
    for shape in [(1,), (300, 784), (10, 3, 3)]:
        values = torch.randn(shape, generator=gen).to(dtype)
        other = torch.randn(7, generator=gen).to(dtype)
        assert all_finite(loss, [values, other])
        for bad in (float("nan"), float("inf"), float("-inf")):
            assert not all_finite(torch.tensor(bad), [values, other]), bad
            for position in (0, values.numel() // 2, values.numel() - 1):
                broken = values.clone()
                broken.view(-1)[position] = bad
                assert not all_finite(loss, [other, broken]), (shape, bad, position)
    assert all_finite(loss, [torch.empty(0, dtype=dtype)])


def test_an_overflowing_sum_is_suspect_and_the_exact_test_clears_it() -> None:
    huge = torch.full((1000,), 3e38)  # finite float32 values whose sum overflows
    assert not all_finite(torch.tensor(0.5), [huge])
    assert exactly_finite([huge]) and not exactly_finite([torch.tensor([1.0, float("nan")])])


def test_every_loss_of_a_group_is_checked() -> None:
    learned = [torch.randn(5)]
    assert all_finite(torch.tensor([0.1, 0.2, 0.3]), learned)
    assert not all_finite(torch.tensor([0.1, float("nan"), 0.3]), learned)
