"""The coefficient start: one-hot on the best stored impression finds a task whose labels are flipped with
respect to most impressions, where the research code's 1/K start stays wrong within the same budget."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from impress_lightning import ImpressLearnModule, PerLayer, TopK
from streams import fit_stream, linear_task


def final_row(alpha_start: str, tmp_path) -> tuple[list[float], ImpressLearnModule]:
    w = torch.randn(16, generator=torch.Generator().manual_seed(1))
    # impressions: the w-side rule twice, its flip once; the new task is the flip again, on fresh examples
    tasks = [linear_task(w, False, 0), linear_task(w, False, 3), linear_task(w, True, 1), linear_task(w, True, 2)]
    L.seed_everything(0)
    module = ImpressLearnModule(num_tasks=4, num_classes=2, input_shape=(1, 4, 4), num_impressions=3,
                                mask_rule=TopK(0.5), combination=PerLayer(), alpha_start=alpha_start,
                                impression_epochs=5, combination_epochs=1,
                                mask_optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
                                alpha_optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
    _, matrix = fit_stream(module, tasks, tmp_path)
    return matrix[-1], module


@pytest.mark.slow
def test_one_hot_start_finds_a_flipped_task_that_the_uniform_start_misses(tmp_path):
    flipped_one_hot, module = final_row("best_impression", tmp_path / "one_hot")
    flipped_uniform, _ = final_row("uniform", tmp_path / "uniform")
    assert min(flipped_one_hot[:3]) > 0.9  # the impressions themselves are good
    assert flipped_one_hot[3] > 0.9 and flipped_uniform[3] < 0.5
    # the start was the flipped impression (slot 2), chosen on the probe
    assert module.placement(3)["best_impression_probe_accuracy"] > 0.9
    coeffs = module.table.kspace_rows(4, 3)[0][3]
    assert int(coeffs.argmax()) == 2
