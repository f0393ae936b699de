"""The datamodule inside a real Trainer: each epoch gets its scheduled task's loader, also after a resume."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from impress_lightning.data import EmbeddedDigits

SCHEDULE = [0, 0, 1, 2]  # epoch → task, as a model's task schedule would map it


def schedule(epoch: int) -> int:
    return SCHEDULE[epoch]


class Recorder(L.LightningModule):
    """Records the batches it is given; follows the schedule like the real module does in ``setup``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.train_batches: dict[int, list[torch.Tensor]] = {}
        self.val_batches: dict[int, list[torch.Tensor]] = {}

    def setup(self, stage: str) -> None:
        self.trainer.datamodule.follow_schedule(schedule)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.train_batches.setdefault(self.current_epoch, []).append(batch[0].clone())
        return self.weight * batch[0].mean()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.val_batches.setdefault(self.current_epoch, []).append(batch[0].clone())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _trainer(max_epochs: int, root: Path, **kwargs: object) -> L.Trainer:
    return L.Trainer(max_epochs=max_epochs, reload_dataloaders_every_n_epochs=1, limit_train_batches=2,
                     limit_val_batches=1, num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=root, accelerator="cpu", **kwargs)


def _first_batches(dm: EmbeddedDigits, task: int, epoch: int, n: int = 2) -> list[torch.Tensor]:
    loader = iter(dm.train_loader(task, epoch))
    return [next(loader)[0] for _ in range(n)]


def _digits(**kwargs: object) -> EmbeddedDigits:
    return EmbeddedDigits(num_tasks=3, batch_size=32, eval_batch_size=64, **kwargs)


def test_each_epoch_trains_and_validates_its_scheduled_task(tmp_path: Path) -> None:
    dm, model = _digits(), Recorder()
    _trainer(4, tmp_path, enable_checkpointing=False).fit(model, datamodule=dm)
    for epoch, task in enumerate(SCHEDULE):
        expected = _first_batches(dm, task, epoch)
        assert all(torch.equal(a, b) for a, b in zip(model.train_batches[epoch], expected, strict=True))
        val = next(iter(dm.eval_dataloader(task, "val")))[0]
        assert torch.equal(model.val_batches[epoch][0], val)
    assert not torch.equal(model.train_batches[0][0], model.train_batches[1][0]), "epochs reshuffle"


def test_a_resumed_fit_sees_the_same_batches_as_an_uninterrupted_one(tmp_path: Path) -> None:
    full = Recorder()
    _trainer(4, tmp_path / "full", enable_checkpointing=False).fit(full, datamodule=_digits())
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _trainer(2, tmp_path / "part", callbacks=[checkpoint]).fit(Recorder(), datamodule=_digits())
    resumed = Recorder()
    _trainer(4, tmp_path / "resumed").fit(resumed, datamodule=_digits(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert sorted(resumed.train_batches) == [2, 3]
    for epoch in (2, 3):
        assert all(torch.equal(a, b) for a, b in zip(resumed.train_batches[epoch], full.train_batches[epoch],
                                                     strict=True))


def test_a_stream_without_validation_split_skips_validation(tmp_path: Path) -> None:
    model = Recorder()
    _trainer(2, tmp_path, enable_checkpointing=False).fit(model, datamodule=_digits(val_fraction=0.0))
    assert sorted(model.train_batches) == [0, 1] and model.val_batches == {}
