"""The task schedule: which task and phase every epoch of the single ``fit`` belongs to.

A pure function of the config *and* the recorded placement decisions (which tasks became impressions, held
in the task table and saved in every checkpoint), so resuming with ``--ckpt_path last`` lands on the right
task and phase with no extra bookkeeping, and every DDP rank builds the same schedule.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, get_args

ImpressionSource = Literal["heterogeneous", "homogeneous", "random", "supsup"]
IMPRESSION_SOURCES: tuple[str, ...] = get_args(ImpressionSource)
StageKind = Literal["impression", "combination", "head", "pending"]

# Per-task placement codes (the task table's ``slots``): >= 0 is the impression's bank slot.
COMBINATION = -1  # the task learns coefficients over the impressions stored before it
PENDING = -2  # an adaptive-bank task whose kind is decided at its first epoch


@dataclass(frozen=True)
class Stage:
    """A run of consecutive epochs that trains one thing.

    ``kind`` is "impression" (learn a mask that is frozen into bank slot ``slot`` at the end),
    "combination" (learn only the coefficients of ``task``), "head" (a hybrid-head candidate: learn a mask of
    the last layer for combination ``task``, below its frozen coefficients; kept only if it wins on
    validation), or "pending" (an adaptive-bank task before its first epoch decides which it is). ``completes_task`` is False for the first K−1 stages of a
    homogeneous set (they all train task 0).
    """

    index: int
    task: int
    kind: StageKind
    slot: int | None
    first_epoch: int
    epochs: int
    completes_task: bool = True

    @property
    def last_epoch(self) -> int:
        return self.first_epoch + self.epochs - 1


@dataclass(frozen=True)
class TaskSchedule:
    """Stages of a stream whose task ``t`` is placed by ``task_slots[t]`` (a bank slot, COMBINATION or PENDING).

    Args:
        task_slots: per task its impression slot, ``COMBINATION`` or ``PENDING``.
        impression_epochs: epochs of an impression stage.
        combination_epochs: epochs of a combination stage.
        homogeneous: if > 0, task 0 learns this many impressions (slots 0..homogeneous-1) with different
            seeds, one stage each, and is evaluated with slot 0.
        head_epochs: if > 0, every combination task is followed by a "head" stage of this many epochs (the
            hybrid-head candidate).
    """

    task_slots: tuple[int, ...]
    impression_epochs: int = 1
    combination_epochs: int = 1
    homogeneous: int = 0
    head_epochs: int = 0

    def __post_init__(self) -> None:
        if not self.task_slots:
            raise ValueError("num_tasks must be >= 1")
        if self.impression_epochs < 1 or self.combination_epochs < 1:
            raise ValueError("impression_epochs and combination_epochs must be >= 1")
        if self.head_epochs < 0:
            raise ValueError(f"head_epochs={self.head_epochs} must be >= 0")

    @property
    def num_tasks(self) -> int:
        return len(self.task_slots)

    @cached_property
    def stages(self) -> tuple[Stage, ...]:
        stages: list[Stage] = []
        epoch = 0

        def add(task: int, kind: StageKind, slot: int | None, epochs: int, completes: bool = True) -> None:
            nonlocal epoch
            stages.append(Stage(len(stages), task, kind, slot, epoch, epochs, completes))
            epoch += epochs

        for task, slot in enumerate(self.task_slots):
            if task == 0 and self.homogeneous:
                for s in range(self.homogeneous):
                    add(0, "impression", s, self.impression_epochs, s == self.homogeneous - 1)
            elif slot >= 0:
                add(task, "impression", slot, self.impression_epochs)
            elif slot == COMBINATION:
                add(task, "combination", None, self.combination_epochs, completes=not self.head_epochs)
                if self.head_epochs:
                    add(task, "head", None, self.head_epochs)
            else:  # undecided: budget the longer of the two kinds (max_epochs is then an upper bound)
                add(task, "pending", None, max(self.impression_epochs, self.combination_epochs + self.head_epochs))
        return tuple(stages)

    @cached_property
    def _first_epochs(self) -> list[int]:
        return [stage.first_epoch for stage in self.stages]

    @property
    def total_epochs(self) -> int:
        """Epochs of the whole stream (an upper bound while adaptive tasks are pending): ``max_epochs``."""
        return self.stages[-1].last_epoch + 1

    def stage_of_epoch(self, epoch: int) -> Stage:
        """The stage that epoch ``epoch`` trains (the last stage for epochs past the end)."""
        index = bisect.bisect_right(self._first_epochs, epoch) - 1
        return self.stages[max(0, min(index, len(self.stages) - 1))]

    def task_of_epoch(self, epoch: int) -> int:
        """Data task trained in epoch ``epoch`` (what the datamodule's train loader yields)."""
        return self.stage_of_epoch(epoch).task

    def impression_slot_of_task(self, task: int) -> int | None:
        """Bank slot that evaluates ``task`` by itself, or None for a combination (or pending) task."""
        slot = self.task_slots[task]
        return slot if slot >= 0 else None

    def kind_of_task(self, task: int) -> StageKind:
        """"impression", "combination" or "pending"."""
        slot = self.task_slots[task]
        return "impression" if slot >= 0 else "combination" if slot == COMBINATION else "pending"
