"""The hybrid head: a combination task may also own a dedicated mask of the last layer, kept only where it wins.

After a combination task's coefficients are learned and frozen, a "head" stage learns a mask of the last
masked layer (the classifier) beneath them. The two candidates, the plain combination and the combination
with its own head mask, are then compared on the task's validation examples; the head mask is kept (stored
bit-packed with the task) only when it scores higher by more than ``min_gain``. A dedicated head helps tasks
that no stored impression is close to and can hurt tasks one is close to, so it is decided per task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from impress_lightning.nn import Masked

if TYPE_CHECKING:
    from impress_lightning.module import ImpressLearnModule


class HybridHead:
    """Try a dedicated last-layer mask for every combination task; keep it only when it wins on validation.

    Args:
        epochs: epochs of the head stage that learns the candidate mask (the coefficients stay frozen).
        validation_batches: batches of the task's validation split on which the two candidates are compared.
        min_gain: accuracy by which the hybrid must beat the plain combination to be kept (ties keep the
            plain combination, which stores less).
    """

    def __init__(self, epochs: int = 1, validation_batches: int = 4, min_gain: float = 0.0) -> None:
        if epochs < 1:
            raise ValueError(f"HybridHead.epochs={epochs} must be >= 1")
        if validation_batches < 1:
            raise ValueError(f"HybridHead.validation_batches={validation_batches} must be >= 1")
        if not 0.0 <= min_gain < 1.0:
            raise ValueError(f"HybridHead.min_gain={min_gain} must be in [0, 1)")
        self.epochs, self.validation_batches, self.min_gain = int(epochs), int(validation_batches), float(min_gain)

    def keeps(self, combination_accuracy: float, hybrid_accuracy: float) -> bool:
        """Whether the hybrid candidate wins."""
        return hybrid_accuracy > combination_accuracy + self.min_gain

    def __repr__(self) -> str:
        return f"HybridHead(epochs={self.epochs}, validation_batches={self.validation_batches}, min_gain={self.min_gain})"


def decide_head(module: ImpressLearnModule, task: int, head_mask: Tensor) -> bool:
    """Compare combination ``task`` with and without ``head_mask`` on its validation examples, record the
    outcome in the task table and return whether the head mask is kept."""
    from impress_lightning.stages import probe_accuracy

    hybrid: HybridHead = module.hybrid_head
    table = module.table
    candidates = [table.selection(task), table.with_head(task, Masked(head_mask))]
    combination, with_head = probe_accuracy(module, task, candidates, hybrid.validation_batches, bn_task=task)
    kept = hybrid.keeps(combination, with_head)
    table.record_head(task, head_mask, kept, combination, with_head)
    return kept
