"""What keeps DDP processes identical where Lightning does not (no other module talks to the strategy)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from impress_lightning.module import ImpressLearnModule


def sync_task_statistics(module: ImpressLearnModule, task: int) -> None:
    """Average ``task``'s BN running statistics over the DDP processes (nothing to do on one process).

    Under manual optimisation Lightning keeps DDP from syncing buffers after the first step (the ranks'
    statistics drift apart within a few steps), so without this each rank would evaluate, and rank zero would checkpoint, statistics of its own data shard only.
    """
    if module.trainer.world_size == 1 or not module.net.batchnorms:
        return
    rows = [row for bn in module.net.batchnorms for row in (bn.task_mean[task], bn.task_var[task])]
    mean = module.trainer.strategy.reduce(torch.cat(rows), reduce_op="mean")
    with torch.no_grad():
        for row, value in zip(rows, mean.split([row.numel() for row in rows])):
            row.copy_(value)
