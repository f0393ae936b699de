"""The coefficient penalty Σ_rows (‖α_row‖₁ − 1)² of a task, read in one pass over its flat vector."""

from __future__ import annotations

import pytest
import torch

from impress_lightning.nn import CombinationRule, Global, PerLayer, PerNeuron
from impress_lightning.tasks import TaskTable

SHAPES = [(30, 16), (20, 30), (10, 20)]


def per_layer_definition(table: TaskTable, task: int) -> torch.Tensor:
    """The penalty by definition: every distinct layer's coefficient rows over the task's n masks."""
    n, flat = int(table.mask_count[task]), table.coefficients[task]
    total = torch.zeros((), dtype=torch.float64)
    for piece in {(s.offset, s.shape): s for s in table.slices}.values():
        rows = flat[piece.offset:piece.offset + piece.numel].view(-1, piece.shape[-1])[:, :n].double()
        total = total + ((rows.abs().sum(dim=1) - 1.0) ** 2).sum()
    return total


@pytest.mark.parametrize("rule", [PerLayer(), Global(), PerNeuron(layers=[-2, -1])], ids=repr)
def test_the_penalty_is_the_definition_and_its_gradient_is_per_row(rule: CombinationRule) -> None:
    table = TaskTable(slots=[0, 1, 2, -1], capacity=3, rule=rule, weight_shapes=SHAPES)
    table.mask_count[3] = 2  # the task combines the first two of three slots: the third column is not read
    with torch.no_grad():
        table.coefficients[3].normal_(generator=torch.Generator().manual_seed(0))
    penalty = table.penalty(3)
    assert torch.allclose(penalty.double(), per_layer_definition(table, 3), rtol=1e-6)
    penalty.backward()
    rows = table.coefficients[3].detach().view(-1, 3)
    expected = 2 * (rows[:, :2].abs().sum(dim=1, keepdim=True) - 1) * rows[:, :2].sign()
    grad = table.coefficients[3].grad.view(-1, 3)
    assert torch.equal(grad[:, :2], expected) and not grad[:, 2].any()


class _RaggedRule(PerLayer):
    """A rule breaking the layout's contract: its last layer's rows are one value short."""

    def layer_shapes(self, weight_shapes, n):
        shapes = super().layer_shapes(weight_shapes, n)
        return shapes[:-1] + [(n - 1,)]


def test_a_layout_without_one_value_per_slot_is_refused() -> None:
    with pytest.raises(ValueError, match="coefficient rows of 3 values"):
        TaskTable(slots=[0, 1, 2, -1], capacity=3, rule=_RaggedRule(), weight_shapes=SHAPES)
