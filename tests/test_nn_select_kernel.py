"""The compiled CPU top-k kernel: built by the install, and bit-identical to the torch-op selection."""

from __future__ import annotations

import threading

import pytest
import torch

from impress_lightning.nn import select


def test_the_install_built_the_kernel() -> None:
    """``pip install`` compiles it (a C compiler is present wherever these tests run); the status line says so."""
    assert select._select_kernel is not None, select.kernel_status()
    assert select.kernel_status().startswith("top-k selection: compiled CPU kernel")


def test_the_status_line_names_the_cause_and_the_fix_without_the_kernel(monkeypatch) -> None:
    monkeypatch.setattr(select, "_select_kernel", None)
    monkeypatch.setattr(select, "_KERNEL_MISSING", "ImportError: no module named _select_kernel")
    line = select.kernel_status()
    assert "torch ops only" in line and "ImportError" in line and "C compiler" in line
    scores = torch.randn(40, 30)
    assert torch.equal(select.topk_keep(scores, 100), select._torch_topk_keep(scores, 100))


def random_case(gen: torch.Generator, trial: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Scores and weights of every awkward kind: ties, signed zeros, tiny and huge magnitudes, inf weights."""
    n = int(torch.randint(1, 40_000, (1,), generator=gen))
    kind = trial % 4
    if kind == 0:
        scores = torch.randn(n, generator=gen)
    elif kind == 1:
        scores = torch.randint(-3, 4, (n,), generator=gen).float()  # ties at most boundaries
    elif kind == 2:
        scores = (torch.randn(n, generator=gen) * 1e-3).half().float()  # few distinct low bits
    else:
        scores = torch.randn(n, generator=gen) * 1e30
    if trial % 3 == 0:
        scores[::3] = -0.0
    weight = torch.randn(n, generator=gen)
    if trial % 5 == 0:
        weight[::7] = float("inf")  # a dropped inf weight is NaN in the float product
    return scores, weight, int(torch.randint(1, n + 1, (1,), generator=gen))


def test_the_kernel_equals_the_torch_ops_on_random_cases() -> None:
    gen = torch.Generator().manual_seed(0)
    for trial in range(120):
        scores, weight, k = random_case(gen, trial)
        masked, reference = select.topk_masked(scores, weight, k), select._torch_topk_masked(scores, weight, k)
        assert torch.equal(masked.view(torch.int32), reference.view(torch.int32)), (trial, scores.numel(), k)
        assert torch.equal(select.topk_keep(scores, k), select._torch_topk_keep(scores, k)), trial


def test_the_kernel_takes_non_contiguous_tensors_and_keeps_the_shape() -> None:
    scores, weight = torch.randn(300, 200).t(), torch.randn(300, 200).t()
    masked = select.topk_masked(scores, weight, 6_000)
    assert masked.shape == (200, 300)
    assert torch.equal(masked, select._torch_topk_masked(scores.contiguous(), weight.contiguous(), 6_000))
    assert torch.equal(select.topk_keep(scores, 6_000), select._torch_topk_keep(scores.contiguous(), 6_000))


def test_concurrent_selections_do_not_share_scratch_space() -> None:
    """The kernel releases the GIL; each thread has its own histograms."""
    layers = [torch.randn(400, 500, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    expected = [select._torch_topk_keep(layer, 20_000) for layer in layers]
    results: dict[int, list[bool]] = {i: [] for i in range(4)}

    def work(i: int) -> None:
        for _ in range(20):
            results[i].append(torch.equal(select.topk_keep(layers[i], 20_000), expected[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(all(r) and len(r) == 20 for r in results.values())


def test_the_kernel_checks_its_count() -> None:
    scores = torch.randn(10)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        select._select_kernel.keep(scores.data_ptr(), torch.empty(10, dtype=torch.bool).data_ptr(), 10, 11)



def test_fit_says_in_one_line_when_the_kernel_is_missing(monkeypatch, caplog) -> None:
    from impress_lightning.module import ImpressLearnModule
    from impress_lightning.nn import TopK

    module = ImpressLearnModule(num_tasks=2, num_classes=10, input_shape=(1, 8, 8), num_impressions=1,
                                mask_rule=TopK(0.3))
    with caplog.at_level("INFO"):
        module.on_fit_start()
    assert "top-k selection" not in caplog.text  # nothing to say when the kernel runs
    monkeypatch.setattr(select, "_select_kernel", None)
    with caplog.at_level("INFO"):
        module.on_fit_start()
    assert [line for line in caplog.text.splitlines() if "torch ops only" in line], caplog.text
