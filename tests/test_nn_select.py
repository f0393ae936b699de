"""Radix top-k selection and the fused mask steps: bit-identical to the exact rule, ties included.

Each selection test runs twice: through the public functions (the compiled kernel for float32 on the CPU) and
through the torch-op implementation every other device and format uses.
"""

from __future__ import annotations

import pytest
import torch

from impress_lightning.nn import Threshold, TopK
from impress_lightning.nn.masks import _StraightThrough
from impress_lightning.nn import select
from impress_lightning.nn.select import topk_keep, topk_masked

IMPLEMENTATIONS = {"public": (topk_keep, topk_masked), "torch_ops": (select._torch_topk_keep, select._torch_topk_masked)}
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def exact_rule(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The rule by definition: a stable descending sort of |scores| (ties: lowest index first), first k kept."""
    order = torch.sort(scores.abs().flatten(), descending=True, stable=True).indices
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    keep[order[:k]] = True
    return keep.view(scores.shape)


def score_cases(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    normal = torch.randn(shape, generator=gen)
    return {
        "continuous": normal.to(dtype),
        "few_values": torch.randint(-3, 4, shape, generator=gen).to(dtype),  # heavy ties at every boundary
        "signed_zeros": torch.where(normal > 0, 0.0, -0.0).to(dtype),  # +0 and -0 have the same magnitude
        "one_bin": (1.0 + torch.rand(shape, generator=gen) * 1e-3).to(dtype),  # all in one top-level bin
    }


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_topk_keep_equals_the_exact_rule(dtype: torch.dtype, implementation: str) -> None:
    topk_keep = IMPLEMENTATIONS[implementation][0]
    shapes = [(1,), (7, 13), (61, 97), (20, 3, 3, 3), (200, 200)]  # the last one is selected by histograms
    for shape, name, scores in [(shape, name, scores) for shape in shapes
                                for name, scores in score_cases(shape, dtype, seed=len(shape)).items()]:
        n = scores.numel()
        for k in sorted({0, 1, n // 10, n // 3, n // 2, n - 1, n}):
            assert torch.equal(topk_keep(scores, k), exact_rule(scores, k)), (shape, name, k)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_topk_masked_is_the_float_product_bit_for_bit(dtype: torch.dtype, implementation: str) -> None:
    """The bit-pattern product equals ``weight * mask`` exactly, the zero's sign of a dropped weight included."""
    topk_masked = IMPLEMENTATIONS[implementation][1]
    int_dtype = {torch.float32: torch.int32, torch.float64: torch.int64}.get(dtype, torch.int16)
    for shape in [(61, 97), (200, 200)]:
        gen = torch.Generator().manual_seed(shape[0])
        weight = torch.randn(shape, generator=gen).to(dtype)
        for name, scores in score_cases(shape, dtype, seed=shape[1]).items():
            n = scores.numel()
            for k in sorted({0, 1, n // 10, n // 2, n}):
                expected = weight * exact_rule(scores, k).to(dtype)
                assert torch.equal(topk_masked(scores, weight, k).view(int_dtype), expected.view(int_dtype)), (
                    shape, name, k)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_topk_keep_matches_torch_topk_without_ties(implementation: str) -> None:
    topk_keep = IMPLEMENTATIONS[implementation][0]
    scores = torch.randn(1024, 784, generator=torch.Generator().manual_seed(3))
    k = 80282
    reference = torch.zeros(scores.numel(), dtype=torch.bool)
    reference[scores.abs().flatten().topk(k, sorted=False).indices] = True
    assert torch.equal(topk_keep(scores, k).flatten(), reference)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_topk_keep_rejects_non_finite_scores(bad: float, dtype: torch.dtype, implementation: str) -> None:
    topk_keep, topk_masked = IMPLEMENTATIONS[implementation]
    for shape in [(50, 40), (200, 200)]:  # selected by kthvalue, by the histogram
        scores = torch.randn(shape).to(dtype)
        scores[3, 7] = bad
        with pytest.raises(ValueError, match="inf or NaN"):
            topk_keep(scores, 10)  # even when the bad entry would not be the boundary
        with pytest.raises(ValueError, match="inf or NaN"):
            topk_masked(scores, torch.ones_like(scores), 10)


def test_topk_keep_rejects_integer_scores() -> None:
    with pytest.raises(TypeError, match="float"):
        topk_keep(torch.arange(10), 3)


def unfused(rule, scores: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The definition the fused step must reproduce: the mask through autograd, then multiplied in."""
    if isinstance(rule, TopK):
        k = round(rule.density * scores.numel())
        return weight * _StraightThrough.apply(scores.abs(), exact_rule(scores.detach(), k).to(scores.dtype))
    return weight * _StraightThrough.apply(scores, (scores.detach() >= rule.threshold).to(scores.dtype))


@pytest.mark.parametrize("rule", [TopK(0.1), TopK(0.5), Threshold(0.0), Threshold(0.01)], ids=repr)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape", [(64, 48), (256, 160)], ids=["kthvalue", "histograms"])
def test_fused_masked_weight_is_bit_identical_in_values_and_gradients(rule, ties: bool, shape) -> None:
    gen = torch.Generator().manual_seed(7)
    raw = torch.randint(-2, 3, shape, generator=gen).float() / 64 if ties else torch.randn(shape, generator=gen) / 20
    weight = (torch.randint(0, 2, shape, generator=gen).float() * 2 - 1) * 0.05
    upstream = torch.randn(shape, generator=gen)
    results = []
    for step in (rule.masked_weight, lambda s, w: unfused(rule, s, w)):
        scores = raw.clone().requires_grad_()
        out = step(scores, weight)
        out.backward(upstream)
        results.append((out.detach(), scores.grad))
    (fused_out, fused_grad), (ref_out, ref_grad) = results
    # Bit patterns, not values: a dropped weight must be the zero of its own sign, as weight * 0.0 gives.
    assert torch.equal(fused_out.view(torch.int32), ref_out.view(torch.int32))
    assert torch.equal(fused_grad.view(torch.int32), ref_grad.view(torch.int32))
    assert torch.equal(rule(raw) != 0, ref_out != 0)  # the plain rule gives the same mask
