"""What a task stream needs from the datamodule, checked when fit starts so a missing method is one clear line
instead of an AttributeError in the middle of the first task."""

from __future__ import annotations

import lightning as L

# method -> what it is for (the error names it); TaskSequenceDataModule and DatasetTaskSequence have them all.
STREAM_METHODS = {
    "follow_schedule": "follow_schedule(task_of_epoch): the model tells it which task each epoch trains",
    "train_dataloader": "train_dataloader(): the loader of the current epoch's task",
    "eval_dataloader": "eval_dataloader(task, split): a finished task's examples for the retention evaluation",
}
PROBE_METHOD = "probe_loader(task): held-out training examples that score the stored impressions"


def check_stream_datamodule(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
    """Raise a one-line ValueError when the trainer has no datamodule or it lacks a method the stream calls
    (``probe_loader`` only when the config probes: ``alpha_start='best_impression'``, an adaptive bank, or
    ``feature_signatures``)."""
    dm = trainer.datamodule
    if dm is None:
        raise ValueError("a task stream needs a datamodule: call trainer.fit(module, datamodule=...) with a "
                         "TaskSequenceDataModule (or DatasetTaskSequence over your own data)")
    needed = dict(STREAM_METHODS)
    hparams = getattr(pl_module, "hparams", {})
    if hparams.get("alpha_start") == "best_impression" or hparams.get("adaptive_bank") is not None or \
            hparams.get("feature_signatures"):
        needed["probe_loader"] = PROBE_METHOD
    missing = [name for name in needed if not callable(getattr(dm, name, None))]
    if missing:
        raise ValueError(f"{type(dm).__name__} has no {', '.join(missing)}: add {'; '.join(needed[m] for m in missing)} "
                         "(or subclass TaskSequenceDataModule / use DatasetTaskSequence)")
