"""Non-affine batch normalisation with separate running statistics per task."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TaskBatchNorm(nn.Module):
    """BatchNorm without γ/β whose running statistics are kept per task (rows of ``[num_tasks, C]``).

    :class:`SupermaskNet` hands the chosen task's rows in as ``stats_in_use`` views for one forward pass, so
    a task's statistics are updated in place while it trains and left alone otherwise.

    Args:
        num_features: channels C.
        num_tasks: how many tasks keep statistics.
        momentum: running-average momentum (PyTorch convention).
        eps: added to the variance.
    """

    def __init__(self, num_features: int, num_tasks: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features, self.num_tasks, self.momentum, self.eps = num_features, num_tasks, momentum, eps
        self.register_buffer("task_mean", torch.zeros(num_tasks, num_features))
        self.register_buffer("task_var", torch.ones(num_tasks, num_features))
        # (mean, var) of the task whose forward pass is in progress, set and cleared by SupermaskNet; None:
        # the layer normalises with the batch's own statistics and updates nothing (task inference).
        self.stats_in_use: tuple[Tensor, Tensor] | None = None

    def stats_for(self, task: int) -> tuple[Tensor, Tensor]:
        """Views of task ``task``'s (running mean, running variance) rows."""
        if not 0 <= task < self.num_tasks:
            raise IndexError(f"task {task} has no BN statistics (num_tasks={self.num_tasks})")
        return self.task_mean[task], self.task_var[task]

    def forward(self, x: Tensor) -> Tensor:
        if self.stats_in_use is None:  # no task chosen: batch statistics, nothing updated
            return F.batch_norm(x, None, None, None, None, True, 0.0, self.eps)
        mean, var = self.stats_in_use
        return F.batch_norm(x, mean, var, None, None, self.training, self.momentum, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_tasks={self.num_tasks}, affine=False"
