"""TaskCheckpoint: one checkpoint at the end of every task, so any task boundary can be reloaded."""

from __future__ import annotations

import string
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint

from impress_lightning.callbacks.progress import say
from impress_lightning.callbacks.retention import RetentionEvaluator

FIELDS = ("task", "kind", "acc", "epoch")


def template_fields(filename: str) -> set[str]:
    """The ``{field}`` names used in a ``filename`` template (a ValueError names any unknown or bad one)."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(filename) if name is not None}
    except ValueError as err:
        raise ValueError(f"TaskCheckpoint filename={filename!r} is not a valid format string ({err})") from None
    unknown = sorted(names - set(FIELDS))
    if unknown:
        raise ValueError(f"TaskCheckpoint filename={filename!r} uses unknown field {{{unknown[0]}}}; "
                         f"use only {', '.join('{' + f + '}' for f in FIELDS)}")
    if "task" not in names:
        raise ValueError(f"TaskCheckpoint filename={filename!r} must contain {{task}} (e.g. task{{task:02d}}) "
                         "or every task would overwrite the same file")
    return names


class TaskCheckpoint(Checkpoint):
    """Saves ``checkpoints/task03-combination-acc0.9194.ckpt`` when task 3 is finished.

    "Finished" means the last epoch of the stage that completes the task, after ``FreezeImpressions`` has
    banked its mask and ``RetentionEvaluator`` has filled its row of the accuracy matrix (this is a
    :class:`~lightning.pytorch.callbacks.Checkpoint`, which Lightning always runs after the other callbacks
    and after the module's ``on_train_epoch_end``). Resume from it with ``fit --ckpt_path <file>``: the run
    continues with the next task. Every rank calls ``trainer.save_checkpoint`` (it has a barrier), rank zero
    writes. ``last.ckpt`` stays the job of ``ModelCheckpoint(save_last=True)``.

    Args:
        dirpath: folder of the files; default the folder of the trainer's ``ModelCheckpoint`` (i.e.
            ``<run dir>/checkpoints``), else ``<log dir>/checkpoints``.
        filename: name without ``.ckpt``; fields ``{task}``, ``{kind}`` ("impression" or "combination"),
            ``{acc}`` (accuracy on the task just finished, from RetentionEvaluator) and ``{epoch}``.
        verbose: print a line per saved file.
    """

    def __init__(self, dirpath: str | None = None, filename: str = "task{task:02d}-{kind}-acc{acc:.4f}",
                 verbose: bool = True) -> None:
        self.fields = template_fields(filename)
        self.dirpath, self.filename, self.verbose = dirpath, filename, verbose
        self.saved: list[str] = []  # files written by this process, in task order

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if "acc" in self.fields and self._retention(trainer) is None:
            raise ValueError(f"TaskCheckpoint filename={self.filename!r} uses {{acc}} but the trainer has no "
                             "RetentionEvaluator callback: add one, or drop {acc} from the filename")

    @staticmethod
    def _retention(trainer: L.Trainer) -> RetentionEvaluator | None:
        return next((cb for cb in trainer.callbacks if isinstance(cb, RetentionEvaluator)), None)

    def _directory(self, trainer: L.Trainer) -> Path:
        if self.dirpath:
            return Path(self.dirpath)
        # ModelCheckpoint resolved (and broadcast from rank zero) its folder in its own setup.
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath:
                return Path(callback.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"

    def file_for(self, trainer: L.Trainer, pl_module: L.LightningModule, task: int) -> Path:
        """Where the checkpoint of finished ``task`` goes (the same path on every rank)."""
        values: dict[str, object] = {"task": task, "kind": pl_module.schedule.kind_of_task(task),
                                     "epoch": trainer.current_epoch}
        if "acc" in self.fields:
            retention = self._retention(trainer)
            row = retention.matrix[task] if retention is not None and len(retention.matrix) > task else None
            if row is None or row[task] is None:
                raise RuntimeError(f"task {task} has no accuracy yet: list RetentionEvaluator among the callbacks "
                                   "so it evaluates the task before TaskCheckpoint saves it")
            values["acc"] = float(row[task])
        return self._directory(trainer) / (self.filename.format(**values) + ".ckpt")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stage = pl_module.current_stage
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        if not stage.completes_task or trainer.current_epoch != stage.last_epoch:
            return
        path = self.file_for(trainer, pl_module, stage.task)
        trainer.save_checkpoint(path, weights_only=False)  # collective: every rank calls it, rank zero writes
        self.saved.append(str(path))
        if self.verbose:
            say(trainer, f"[impress] task {stage.task} checkpoint: {path}")
