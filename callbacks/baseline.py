"""The best single impression: what a task would score with no training of its own.

For every task with impressions stored before it, each of those impressions is evaluated alone on the task's
evaluation split (the split of the accuracy matrix); the best one is the reference a learned combination has
to beat (a combination that starts one-hot on the probe's best impression can reach it without learning
anything), and, being what the bank offers the task before it trains, it is also the "accuracy before
training" of forward transfer (``callbacks.retention``).
"""

from __future__ import annotations

from typing import Callable

import lightning as L
from torch import Tensor

from impress_lightning.nn import Impression


def impressions_before(pl_module: L.LightningModule, task: int) -> int:
    """How many bank slots were stored before ``task`` started: the masks a combination task combines, or
    the slots below an impression task's own."""
    slot = pl_module.table.slot_of(task)
    return slot if slot is not None else int(pl_module.table.mask_count[task])


def best_single_impression(pl_module: L.LightningModule, task: int,
                           evaluate: Callable[[Callable[[Tensor], Tensor]], float],
                           max_slots: int | None = None) -> dict[str, float | int] | None:
    """``{"accuracy", "slot", "probed"}`` of the stored impression that scores best on ``task`` when used
    alone, among the ``probed`` ones evaluated, or None when nothing was stored before the task.
    ``evaluate(predict)`` is the accuracy of a batch-to-labels function on the task's evaluation split
    (``RetentionEvaluator`` passes its own). BN layers normalise with each batch's own statistics, as the
    probe does: the task's statistics belong to its own weights.

    ``max_slots``: evaluate only the most recently stored this many impressions (None: all of them). A SupSup
    stream stores one per task, so evaluating all is quadratic in the stream's length.
    """
    stored = impressions_before(pl_module, task)
    if stored < 1:
        return None
    first = 0 if max_slots is None else max(stored - max_slots, 0)
    bn = "batch" if pl_module.net.bn_names else None

    def alone(slot: int) -> Callable[[Tensor], Tensor]:
        return lambda x: pl_module.net(x, Impression(slot), bn_task=bn)[:, : pl_module.num_classes].argmax(dim=1)

    scores = {slot: evaluate(alone(slot)) for slot in range(first, stored)}
    best = max(scores, key=lambda s: scores[s])  # ties: the earliest slot
    return {"accuracy": scores[best], "slot": best, "probed": len(scores)}
