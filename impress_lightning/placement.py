"""Impression placement: which tasks of a stream become impressions (no Lightning here)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from impress_lightning.tasks import TaskTable


class AdaptiveBank:
    """Grow the impression bank when the stream needs it.

    At a task's first epoch, every stored impression is scored on the task's probe examples (held-out
    training data: the validation split of the task's training set when there is one). When the best of
    them scores below ``target`` and the bank has room, the task learns a new impression; otherwise it
    learns coefficients over the stored ones (starting at the best one). The decision and its score are
    module state, so a resumed run and every DDP rank make the same decisions.

    Args:
        target: accuracy the best stored impression must reach on the probe for the task to become a
            combination task.
        max_impressions: bank capacity: once this many impressions are stored, every later task combines.
    The probe's size is the module's ``probe_batches``.
    """

    def __init__(self, target: float = 0.8, max_impressions: int = 12) -> None:
        if not 0.0 < target <= 1.0:
            raise ValueError(f"AdaptiveBank.target={target} must be in (0, 1]; e.g. 0.8")
        if max_impressions < 1:
            raise ValueError(f"AdaptiveBank.max_impressions={max_impressions} must be >= 1")
        self.target, self.max_impressions = float(target), int(max_impressions)

    def becomes_impression(self, probe_accuracy: Sequence[float], stored: int) -> bool:
        """Whether a task whose stored impressions score ``probe_accuracy`` learns a new impression."""
        best = max(probe_accuracy, default=-math.inf)
        return stored < self.max_impressions and best < self.target

    def __repr__(self) -> str:
        return f"AdaptiveBank(target={self.target}, max_impressions={self.max_impressions})"


def placement_reason(kind: str, probe_accuracy: float, adaptive: AdaptiveBank | None, stored: int) -> str:
    """One line that says why a task became what it is (recorded in retention.json); ``probe_accuracy`` < 0
    means nothing was probed."""
    if adaptive is None or probe_accuracy < 0:
        return "placed by the config"
    if kind == "impression":
        return f"best stored impression scored {probe_accuracy:.4f} < target {adaptive.target} on the probe"
    if stored >= adaptive.max_impressions and probe_accuracy < adaptive.target:
        return f"bank full ({adaptive.max_impressions} impressions); best stored impression scored {probe_accuracy:.4f}"
    return f"best stored impression scored {probe_accuracy:.4f} >= target {adaptive.target} on the probe"


def placement_record(table: TaskTable, task: int, kind: str, adaptive: AdaptiveBank | None) -> dict[str, object]:
    """Why ``task`` is what it is: the decision's reason, the best stored impression's probe accuracy (None
    when nothing was probed) and, for a task that tried a hybrid head, that decision's validation accuracies."""
    probe = float(table.probe_accuracy[task])
    before = int((table.slots[:task] >= 0).sum())  # impressions stored before it (one reduction, not T reads)
    record: dict[str, object] = {"placement": placement_reason(kind, probe, adaptive, before),
                                 "best_impression_probe_accuracy": None if probe < 0 else probe}
    plain, hybrid = table.head_validation[task].tolist()
    if plain >= 0:
        record["hybrid_head"] = {"kept": bool(table.head_kept[task]), "validation_accuracy": plain,
                                 "hybrid_validation_accuracy": hybrid}
    return record
