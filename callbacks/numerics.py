"""NonFiniteGuard: the first non-finite training loss or learned value stops the run, before anything of the
task is frozen, evaluated or checkpointed; a finite loss that explodes is warned about."""

from __future__ import annotations

import math
from typing import Any, Mapping

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

# The optimiser whose learning rate the message points at, per stage kind.
_OPTIMIZER_OF = {"impression": "model.mask_optimizer", "head": "model.mask_optimizer",
                 "combination": "model.alpha_optimizer"}


class NonFiniteError(ArithmeticError):
    """A training loss, mask score or coefficient became NaN or infinite; the message is one line."""


def checked_values(losses: torch.Tensor, learned: list[torch.Tensor]) -> torch.Tensor:
    """``[every loss of the step, the sum of every learned tensor]`` as one float32 vector (no host sync).

    A sum is non-finite when an entry is NaN or infinite, so all of it is finite when the losses and every
    learned entry are: one vectorised pass per tensor, on every training step. The converse fails only for
    finite values so large that their sum overflows; :func:`all_finite` then settles it exactly.
    """
    # float32 accumulation at least, so half-precision values do not overflow their own narrow range
    sums = [v.detach().sum(dtype=None if v.dtype == torch.float64 else torch.float32) for v in learned if v.numel()]
    return torch.cat([losses.detach().reshape(-1).to(torch.float32), *(t.to(torch.float32).reshape(1) for t in sums)])


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every entry of ``tensors`` is finite (exact, one host sync per tensor)."""
    return all(bool(torch.isfinite(t.detach()).all()) for t in tensors)


class NonFiniteGuard(L.Callback):
    """After every training step, checks the loss (every loss of a group of batches, see the datamodule's
    ``batches_per_step``) and the values the stage learns (the impression's mask scores, or the combination
    task's coefficients) and raises :class:`NonFiniteError` at the first NaN or infinity. Raising inside the
    step means the epoch never ends: the task is not frozen, gets no retention row and no checkpoint, and
    ``last.ckpt`` stays the last good epoch.

    ``ImpressLearnModule`` adds one when the trainer has none. Under DDP the verdict is summed over the
    processes, so every rank stops at the same step.

    Args:
        divergence_factor: warn (once per stage) when a finite loss exceeds this multiple of the stage's first
            loss, e.g. after a far too high learning rate; None never warns.
    """

    def __init__(self, divergence_factor: float | None = 1e6) -> None:
        if divergence_factor is not None and not divergence_factor > 1:
            raise ValueError(f"NonFiniteGuard divergence_factor={divergence_factor} must be > 1 (or null)")
        self.divergence_factor = divergence_factor
        self._start_loss: dict[int, float] = {}  # stage index -> first loss this process saw in the stage
        self._warned: set[int] = set()

    @staticmethod
    def learned_values(pl_module: L.LightningModule, stage: Any) -> list[torch.Tensor]:
        """What ``stage`` is changing: every layer's scores (impression), the last layer's (a hybrid-head
        stage) or the task's coefficients."""
        if stage.kind == "impression":
            return [layer.scores for layer in pl_module.net.layers]
        if stage.kind == "head":
            return [pl_module.net.layers[-1].scores]
        return [pl_module.table.coefficients[stage.task]]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        losses = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not torch.is_tensor(losses):
            return
        stage = pl_module.current_stage
        learned = self.learned_values(pl_module, stage)
        losses = losses.detach().reshape(-1)  # one per optimiser step of the batch (several for a group)
        with torch.no_grad():
            checked = checked_values(losses, learned).tolist()  # one host sync per step
            values = checked[: len(losses)]
            # Only a suspect step pays for the exact test (a sum of huge finite values can overflow).
            bad = not all(map(math.isfinite, checked)) and not (all(map(math.isfinite, values)) and all_finite(learned))
            if trainer.world_size > 1:  # every rank must stop at the same step
                bad = bool(trainer.strategy.reduce(torch.tensor(float(bad), device=losses.device), reduce_op="sum"))
        if bad:
            first = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
            what = f"training loss {values[first]}" if first is not None else (
                "mask scores" if stage.kind in ("impression", "head") else "coefficients")
            step = trainer.global_step - len(values) + 1 + (first or len(values) - 1)
            raise NonFiniteError(
                f"non-finite {what} at {self._where(trainer, stage, batch_idx, step)}; nothing of task {stage.task} "
                f"was recorded as learned: lower the learning rate ({_OPTIMIZER_OF[stage.kind]}) and resume from "
                f"the last finished task's checkpoint (checkpoints/taskNN-*.ckpt) or with --ckpt_path last")
        self._warn_if_diverging(trainer, stage, batch_idx, values[-1])

    @staticmethod
    def _where(trainer: L.Trainer, stage: Any, batch_idx: int, step: int | None = None) -> str:
        return (f"task {stage.task}, stage {stage.index} ({stage.kind}), epoch {trainer.current_epoch}, "
                f"batch {batch_idx}, step {trainer.global_step if step is None else step}")

    def _warn_if_diverging(self, trainer: L.Trainer, stage: Any, batch_idx: int, value: float) -> None:
        start = self._start_loss.setdefault(stage.index, value)
        if self.divergence_factor is None or stage.index in self._warned:
            return
        ratio = value / max(abs(start), 1e-12)
        if ratio > self.divergence_factor:
            self._warned.add(stage.index)
            rank_zero_warn(f"[impress] the training loss at {self._where(trainer, stage, batch_idx)} is {value:.3g}, "
                           f"{ratio:.3g}x its start ({start:.3g}): the learning rate ({_OPTIMIZER_OF[stage.kind]}) "
                           f"is probably too high")
