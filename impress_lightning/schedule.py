"""The task schedule: which task and phase every epoch of the single ``fit`` belongs to.

A pure function of the config, so resuming with ``--ckpt_path last`` lands on the right task and phase with
no extra bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

ImpressionSource = Literal["heterogeneous", "homogeneous", "random", "supsup"]


@dataclass(frozen=True)
class Stage:
    """A run of consecutive epochs that trains one thing.

    ``kind`` is "impression" (learn a mask that is frozen into bank slot ``slot`` at the end) or
    "combination" (learn only the coefficients α of ``task``). ``completes_task`` is False for the first
    K−1 stages of a homogeneous set (they all train task 0).
    """

    index: int
    task: int
    kind: Literal["impression", "combination"]
    slot: int | None
    first_epoch: int
    epochs: int
    completes_task: bool = True

    @property
    def last_epoch(self) -> int:
        return self.first_epoch + self.epochs - 1


@dataclass(frozen=True)
class TaskSchedule:
    """Stages of a stream of ``num_tasks`` tasks with ``num_impressions`` impressions.

    Sources: "heterogeneous" (the first K tasks learn the impressions), "homogeneous" (K impressions of task 0
    with different seeds), "random" (K untrained random masks; every task is a combination task), "supsup"
    (every task learns a dedicated mask; no combination tasks).
    """

    num_tasks: int
    num_impressions: int
    source: ImpressionSource = "heterogeneous"
    impression_epochs: int = 1
    combination_epochs: int = 1

    def __post_init__(self) -> None:
        if self.num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {self.num_tasks}")
        if self.impression_epochs < 1 or self.combination_epochs < 1:
            raise ValueError("impression_epochs and combination_epochs must be >= 1")
        if self.source not in ("heterogeneous", "homogeneous", "random", "supsup"):
            raise ValueError(f"impression_source={self.source!r}: use heterogeneous|homogeneous|random|supsup")
        if self.source != "supsup" and self.num_impressions < 1:
            raise ValueError(f"num_impressions must be >= 1 for impression_source={self.source!r}")
        if self.source == "heterogeneous" and self.num_impressions > self.num_tasks:
            raise ValueError(f"num_impressions={self.num_impressions} > num_tasks={self.num_tasks}: heterogeneous "
                             "impressions are the first K tasks; lower num_impressions")

    @property
    def bank_size(self) -> int:
        """Bank slots every layer needs: K, or T for SupSup."""
        return self.num_tasks if self.source == "supsup" else self.num_impressions

    @cached_property
    def stages(self) -> tuple[Stage, ...]:
        plan: list[tuple[int, str, int | None, bool]] = []  # (task, kind, slot, completes_task)
        k, t = self.num_impressions, self.num_tasks
        if self.source == "supsup":
            plan = [(i, "impression", i, True) for i in range(t)]
        elif self.source == "heterogeneous":
            plan = [(i, "impression", i, True) for i in range(k)] + [(i, "combination", None, True) for i in range(k, t)]
        elif self.source == "homogeneous":
            plan = [(0, "impression", s, s == k - 1) for s in range(k)]
            plan += [(i, "combination", None, True) for i in range(1, t)]
        else:  # random: the bank is filled before training, every task learns α
            plan = [(i, "combination", None, True) for i in range(t)]
        stages, epoch = [], 0
        for index, (task, kind, slot, completes) in enumerate(plan):
            epochs = self.impression_epochs if kind == "impression" else self.combination_epochs
            stages.append(Stage(index, task, kind, slot, epoch, epochs, completes))  # type: ignore[arg-type]
            epoch += epochs
        return tuple(stages)

    @property
    def total_epochs(self) -> int:
        """Epochs of the whole stream: the trainer's ``max_epochs``."""
        return self.stages[-1].last_epoch + 1

    def stage_of_epoch(self, epoch: int) -> Stage:
        """The stage that epoch ``epoch`` trains (the last stage for epochs past the end)."""
        for stage in self.stages:
            if epoch <= stage.last_epoch:
                return stage
        return self.stages[-1]

    def task_of_epoch(self, epoch: int) -> int:
        """Data task trained in epoch ``epoch`` (what the datamodule's train loader yields)."""
        return self.stage_of_epoch(epoch).task

    def impression_slot_of_task(self, task: int) -> int | None:
        """Bank slot that evaluates ``task`` by itself, or None for a combination task."""
        if self.source in ("heterogeneous", "supsup") and task < self.bank_size:
            return task
        if self.source == "homogeneous" and task == 0:
            return 0
        return None

    def kind_of_task(self, task: int) -> str:
        """"impression" or "combination"."""
        return "impression" if self.impression_slot_of_task(task) is not None else "combination"
