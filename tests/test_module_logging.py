"""Training logs only on the steps Lightning writes, and lands on every one of them."""

from __future__ import annotations

import csv

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

from impress_lightning import ImpressLearnModule, PerLayer
from streams import TensorStream, linear_task


def test_train_metrics_land_on_every_step_the_logger_writes_and_nowhere_else(tmp_path):
    w = torch.randn(16, generator=torch.Generator().manual_seed(1))
    tasks = [linear_task(w, False, 0, n_train=160), linear_task(w, True, 1, n_train=160)]
    module = ImpressLearnModule(num_tasks=2, num_classes=2, input_shape=(1, 4, 4), num_impressions=1,
                                combination=PerLayer(), impression_epochs=2, combination_epochs=1)
    every = 3
    trainer = L.Trainer(max_epochs=module.schedule.total_epochs, reload_dataloaders_every_n_epochs=1,
                        logger=CSVLogger(tmp_path, name="run", version=""), log_every_n_steps=every,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu")
    trainer.fit(module, datamodule=TensorStream(tasks))  # 3 epochs x 5 batches of 32
    with open(tmp_path / "run" / "metrics.csv") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]
    batches = 3 * 5
    # Lightning writes after batch b (0-based) when (b + 1) % every == 0 and records step b
    assert steps == [b for b in range(batches) if (b + 1) % every == 0]
