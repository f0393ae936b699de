"""PauseAt: a test-only callback that freezes a training run at a chosen batch so a test can SIGKILL it there.

Put ``tests/scripts`` on PYTHONPATH and add ``--trainer.callbacks+=pause_at.PauseAt`` with its init args.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning as L


class PauseAt(L.Callback):
    """At batch ``batch`` of epoch ``epoch`` (before it trains), write this process id to ``marker`` and sleep.

    The run then sits in the middle of an epoch until the test kills it, so the kill point is exact however
    slow the machine is.

    Args:
        epoch: epoch to stop in.
        batch: batch index within that epoch.
        marker: file to create when the pause starts.
        seconds: how long to sleep (the test normally kills the process long before).
    """

    def __init__(self, epoch: int, batch: int, marker: str, seconds: float = 600.0) -> None:
        self.epoch, self.batch, self.marker, self.seconds = epoch, batch, marker, seconds

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            Path(self.marker).write_text(str(os.getpid()))
            time.sleep(self.seconds)
