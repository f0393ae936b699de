"""FreezeImpressions: at the end of an impression stage, freeze its mask into the bit-packed bank."""

from __future__ import annotations

import lightning as L

from impress_lightning.callbacks.progress import say


class FreezeImpressions(L.Callback):
    """Freezes the supermask of each impression stage (a basis task) into every layer's impression bank, a
    combination task's coefficients at their stored precision, and decides a hybrid-head candidate.

    It runs at the end of the stage's last epoch, before ``RetentionEvaluator`` and before checkpointing, so
    a checkpoint taken at a task boundary already holds the frozen mask. ``ImpressLearnModule`` adds it (in
    that order) when the trainer has none.

    Args:
        verbose: print a line per frozen impression.
    """

    def __init__(self, verbose: bool = True) -> None:
        self.verbose = verbose

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stage = pl_module.current_stage
        if trainer.current_epoch != stage.last_epoch:
            return
        pl_module.freeze_stage(stage)
        if self.verbose and stage.kind == "impression":
            stored = sum(layer.bank.stored_bytes() for layer in pl_module.net.layers) // (stage.slot + 1)
            say(trainer, f"[impress] froze impression {stage.slot} (task {stage.task}): {stored} bytes bit-packed")
        if self.verbose and stage.kind == "head":
            plain, hybrid = pl_module.table.head_validation[stage.task].tolist()
            verdict = "kept" if pl_module.table.head_kept[stage.task] else "dropped"
            say(trainer, f"[impress] task {stage.task}: own head mask {verdict} (validation {hybrid:.4f} with it, "
                         f"{plain:.4f} without)")
