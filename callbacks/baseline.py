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
                           evaluate: Callable[[Callable[[Tensor], Tensor]], float]) -> dict[str, float | int] | None:
    """``{"accuracy", "slot"}`` of the stored impression that scores best on ``task`` when used alone, or None
    when nothing was stored before the task. ``evaluate(predict)`` is the accuracy of a batch-to-labels
    function on the task's evaluation split (``RetentionEvaluator`` passes its own). BN layers normalise with
    each batch's own statistics, as the probe does: the task's statistics belong to its own weights."""
    stored = impressions_before(pl_module, task)
    if stored < 1:
        return None
    bn = "batch" if pl_module.net.bn_names else None

    def alone(slot: int) -> Callable[[Tensor], Tensor]:
        return lambda x: pl_module.net(x, Impression(slot), bn_task=bn)[:, : pl_module.num_classes].argmax(dim=1)

    scores = [evaluate(alone(slot)) for slot in range(stored)]
    best = max(range(stored), key=lambda s: scores[s])
    return {"accuracy": scores[best], "slot": best}
