"""Task-aware progress bars, and printing that keeps a line on screen while a bar is drawn.

Lightning's bars count global epochs ("Epoch 19/65"), which says nothing about a task stream. These subclasses
of Lightning's own bars describe the running stage instead: ``task 3 (4/6) combination · epoch 3/10`` (the
stage's own epoch out of its own epochs). ``ImpressLearnModule.configure_callbacks`` swaps the trainer's
default bar for the matching one (see ``callbacks.ordering``), so the CLI and a plain ``Trainer`` get it;
a bar the user configured themselves is left alone.

:func:`say` prints a line through the running bar's console: a line logged to stderr while Rich redraws its
live display is overwritten in a real terminal (measured in tmux: 14 of 15 per-task lines were lost).
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_info

# The per-step "task" scalar (the W&B / CSV axis) would show as "task: 1.000"; the description names it.
_HIDDEN_METRICS = ("task", "v_num")
# Redraws per second of the task-aware bars by default. Lightning's Rich bar asks for 100, and each redraw of
# the live display holds the interpreter lock for milliseconds: at a small network's step rate that slowed a
# whole fit down by about half (docs/benchmarks.md). Ten a second looks the same to a reader.
REDRAWS_PER_SECOND = 10


def stage_description(trainer: L.Trainer) -> str | None:
    """``task <id> (k/T) <phase> · epoch e/E`` of the stage the trainer runs now (task ids count from 0, as in
    retention.json and the checkpoint names; k/T from 1), or None outside a task stream."""
    module = trainer.lightning_module if trainer is not None else None
    stage = getattr(module, "current_stage", None) if module is not None else None
    if stage is None:
        return None
    phase = "deciding" if stage.kind == "pending" else stage.kind  # an adaptive task decides at its first batch
    epoch = trainer.current_epoch - stage.first_epoch + 1
    return f"task {stage.task} ({stage.task + 1}/{module.num_tasks}) {phase} · epoch {epoch}/{stage.epochs}"


def _visible_metrics(items: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in items.items() if key not in _HIDDEN_METRICS}


class _Throttle:
    """Lets a bar redraw after a training batch at most ``per_second`` times a second, and always after an
    epoch's last batch (so the final count and metrics are exact): the bar's per-batch work (reading the
    logged metrics, updating and redrawing the display) is then skipped on most batches of a fast loop."""

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self._drawn_at = float("-inf")

    def due(self, batch_idx: int, total: int | float | None) -> bool:
        now = time.monotonic()
        last = total is not None and batch_idx + 1 >= total
        if last or now - self._drawn_at >= self.interval:
            self._drawn_at = now
            return True
        return False


class TaskRichProgressBar(RichProgressBar):
    """Lightning's ``RichProgressBar`` whose training bar names the task, its phase and the stage's epoch, and
    which redraws after training batches at most ``refresh_rate`` times a second.

    Takes every argument of ``RichProgressBar`` (``refresh_rate`` defaults to ``REDRAWS_PER_SECOND``); lines
    printed with :func:`say` go through its console.
    """

    def __init__(self, refresh_rate: int = REDRAWS_PER_SECOND, *args: Any, **kwargs: Any) -> None:
        super().__init__(refresh_rate, *args, **kwargs)
        self._throttle = _Throttle(refresh_rate)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._throttle.due(batch_idx, self.total_train_batches):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _get_train_description(self, current_epoch: int) -> str:
        return stage_description(self.trainer) or super()._get_train_description(current_epoch)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # The module's epoch-start hook runs after the bars': an adaptive task's kind is known from here on.
        if batch_idx == 0 and self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, description=self._get_train_description(0))

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return _visible_metrics(super().get_metrics(trainer, pl_module))

    def print(self, *args: Any, **kwargs: Any) -> None:
        """Print above the live display (through Rich's console), or plainly before the bar exists."""
        if self._console is None:
            print(*args, **kwargs)
        else:
            self._console.print(*args, markup=False, highlight=False, soft_wrap=True)  # no wrap: greppable


class TaskTQDMProgressBar(TQDMProgressBar):
    """Lightning's ``TQDMProgressBar`` whose training bar names the task, its phase and the stage's epoch, and
    which updates after training batches at most ``REDRAWS_PER_SECOND`` times a second (on top of its
    ``refresh_rate``, a number of batches).

    Takes every argument of ``TQDMProgressBar``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._throttle = _Throttle(REDRAWS_PER_SECOND)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        total = self._train_progress_bar.total if self._train_progress_bar is not None else None
        # Only the batches the bar's own refresh_rate would show are throttled, so the two rules never starve
        # each other.
        if self._should_update(batch_idx + 1, total) and self._throttle.due(batch_idx, total):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(stage_description(trainer) or f"Epoch {trainer.current_epoch}")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if batch_idx == 0 and self._train_progress_bar is not None:
            self.train_progress_bar.set_description(stage_description(trainer) or "", refresh=False)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return _visible_metrics(super().get_metrics(trainer, pl_module))

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        """``tqdm.write`` while a bar is open; plain print otherwise (Lightning's version prints nothing then)."""
        bars = (self._train_progress_bar, self._val_progress_bar, self._test_progress_bar)
        if any(bar is not None and not bar.disable for bar in bars):
            super().print(*args, sep=sep, **kwargs)
        else:
            print(*args, sep=sep, **kwargs)


def task_progress_bar(existing: ProgressBar) -> ProgressBar | None:
    """The task-aware bar that replaces Lightning's default ``existing`` bar (same settings where Lightning
    exposes them), or None when ``existing`` is already one of ours or a bar the user chose."""
    if type(existing) is RichProgressBar:  # at most REDRAWS_PER_SECOND redraws a second, not Lightning's 100
        return TaskRichProgressBar(refresh_rate=min(existing.refresh_rate, REDRAWS_PER_SECOND), leave=existing._leave,
                                   theme=existing.theme, console_kwargs=existing._console_kwargs)
    if type(existing) is TQDMProgressBar:
        return TaskTQDMProgressBar(refresh_rate=existing.refresh_rate, leave=existing._leave)
    return None


def say(trainer: L.Trainer, message: str) -> None:
    """Print ``message`` on rank zero so it stays on screen: through the trainer's progress bar when it has an
    enabled one (a user's own bar included: ``ProgressBar.print`` is Lightning's hook for this), else to the
    ``lightning.pytorch`` log like ``rank_zero_info``."""
    if not trainer.is_global_zero:
        return
    bar = trainer.progress_bar_callback
    if bar is not None and bar.is_enabled:
        bar.print(message)
    else:
        rank_zero_info(message)
