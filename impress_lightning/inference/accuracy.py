"""Scoring task inference: task-inference accuracy and accuracy with the inferred task (GNs / GNu)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class InferenceTally:
    """Counts that add up over batches (and ranks): ``tally_a + tally_b``.

    Attributes:
        task_hits: batches whose task was inferred correctly.
        task_trials: batches whose task was inferred.
        correct: examples classified correctly with the inferred task.
        total: examples seen.
    """

    task_hits: int = 0
    task_trials: int = 0
    correct: int = 0
    total: int = 0

    def __add__(self, other: "InferenceTally") -> "InferenceTally":
        return InferenceTally(self.task_hits + other.task_hits, self.task_trials + other.task_trials,
                              self.correct + other.correct, self.total + other.total)

    @property
    def task_accuracy(self) -> float:
        """Fraction of batches whose task was inferred correctly (nan before any batch)."""
        return self.task_hits / self.task_trials if self.task_trials else math.nan

    @property
    def accuracy(self) -> float:
        """Fraction of examples classified correctly with inferred task ids (nan before any example)."""
        return self.correct / self.total if self.total else math.nan


def score_inference(true_task: int, inferred_task: int, preds: Tensor, y: Tensor, *,
                    shared_labels: bool) -> InferenceTally:
    """Tally one single-task batch.

    With unshared labels (GNu: each task has its own label space) a wrongly inferred task makes every
    prediction meaningless, so the whole batch counts as wrong. With shared labels (GNs) the predictions
    are scored as they are.
    """
    if preds.shape != y.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and y {tuple(y.shape)} must have the same shape")
    total = y.numel()
    hit = int(inferred_task) == int(true_task)
    correct = int((preds == y).sum()) if hit or shared_labels else 0
    return InferenceTally(int(hit), 1, correct, total)
