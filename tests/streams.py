"""A tiny in-memory task stream for tests: tasks given as tensors (no files, no download)."""

from __future__ import annotations

from typing import Callable

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset


class TensorStream(L.LightningDataModule):
    """Task t is ``(x_train, y_train, x_test, y_test)``; the epoch's task comes from the model's schedule."""

    def __init__(self, tasks: list[tuple[Tensor, Tensor, Tensor, Tensor]], batch_size: int = 32) -> None:
        super().__init__()
        self.tasks, self.batch_size = tasks, batch_size
        self.num_tasks, self.input_shape = len(tasks), tuple(tasks[0][0].shape[1:])
        self.num_classes = int(max(int(t[1].max()) for t in tasks)) + 1
        self.label_maps = None
        self._task_of_epoch: Callable[[int], int] = lambda epoch: epoch

    def follow_schedule(self, task_of_epoch: Callable[[int], int]) -> None:
        self._task_of_epoch = task_of_epoch

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch
        x, y = self.tasks[self._task_of_epoch(epoch)][:2]
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        return DataLoader(TensorDataset(x[order], y[order]), batch_size=self.batch_size)

    def probe_loader(self, task: int) -> DataLoader:
        x, y = self.tasks[task][:2]
        return DataLoader(TensorDataset(x, y), batch_size=128)

    def eval_dataloader(self, task: int, split: str = "test") -> DataLoader:
        x, y = self.tasks[task][2:]
        return DataLoader(TensorDataset(x, y), batch_size=256)


def fit_stream(module, tasks: list[tuple[Tensor, Tensor, Tensor, Tensor]], root) -> tuple[L.Trainer, list[list[float]]]:
    """Fit ``module`` on a TensorStream of ``tasks`` with a plain, quiet Trainer; returns it and the final
    accuracy matrix of the RetentionEvaluator the module supplies."""
    from impress_lightning import RetentionEvaluator

    trainer = L.Trainer(max_epochs=module.schedule.total_epochs, reload_dataloaders_every_n_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=root, accelerator="cpu")
    trainer.fit(module, datamodule=TensorStream(tasks))
    evaluator = next(cb for cb in trainer.callbacks if isinstance(cb, RetentionEvaluator))
    return trainer, evaluator.matrix


def linear_task(direction: Tensor, flip: bool, seed: int, n_train: int = 512, n_test: int = 256):
    """Gaussian inputs ``[N, 1, 4, 4]`` labelled by the side of ``direction`` they fall on (flipped on request)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_test, 1, 4, 4, generator=gen)
    y = ((x.flatten(1) @ direction) > 0).long()
    y = 1 - y if flip else y
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def fit_selection(net: torch.nn.Module, selection: object, params: list[Tensor], xs: Tensor, ys: Tensor, steps: int,
                  lr: float, gen: torch.Generator, penalty: Callable[[], Tensor] | None = None) -> None:
    """``steps`` Adam steps of cross-entropy (+ ``penalty()``) on random batches of 64 of ``(xs, ys)``,
    training ``params`` of ``net`` run with ``selection`` (mask scores or α)."""
    import torch.nn.functional as F

    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        pick = torch.randint(0, len(xs), (64,), generator=gen)
        loss = F.cross_entropy(net(xs[pick], selection), ys[pick])
        if penalty is not None:
            loss = loss + penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
