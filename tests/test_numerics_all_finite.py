"""The guard's finiteness check (through aminmax) agrees with isfinite().all() on every float format."""

from __future__ import annotations

import pytest
import torch

from impress_lightning.callbacks.numerics import _all_finite


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_all_finite_agrees_with_isfinite_all(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    for shape in [(1,), (300, 784), (10, 3, 3)]:
        values = torch.randn(shape, generator=gen).to(dtype)
        assert bool(_all_finite(values))
        for bad in (float("nan"), float("inf"), float("-inf")):
            for position in (0, values.numel() // 2, values.numel() - 1):
                broken = values.clone()
                broken.view(-1)[position] = bad
                assert not bool(_all_finite(broken)), (shape, bad, position)
    assert bool(_all_finite(torch.empty(0, dtype=dtype)))
