"""The task table: the one owner of what a learned task is (no Lightning here).

For every task of the stream it holds where the task sits (an impression's bank slot, a combination, or
not decided yet), how many bank masks its coefficients cover, its flat coefficient vector (cut into one
view per masked layer by a :class:`~impress_lightning.nn.CombinationRule`), and how many tasks are finished.
From that it answers the questions training, export and task inference all ask: the selection that
evaluates a task, its K-space coefficient rows, what it stores, and the coefficient penalty.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from impress_lightning.nn import (
    CombinationRule, Combine, Impression, Layerwise, Masked, PerLayer, Selection, one_hot_coefficients, packed_size,
)
from impress_lightning.schedule import COMBINATION, PENDING, ImpressionSource

START_RULES = ("best_impression", "uniform")


def plan_slots(source: ImpressionSource, num_tasks: int, num_impressions: int,
               impression_tasks: Sequence[int] | None = None, adaptive: bool = False) -> list[int]:
    """The placement the config fixes before training: per task its bank slot, COMBINATION or PENDING.

    heterogeneous: the tasks in ``impression_tasks`` (default the first ``num_impressions``) are impressions
    in that order; with ``adaptive`` every other task is PENDING (decided at its first epoch). homogeneous:
    task 0 holds slot 0 (its K impressions are stages of task 0). random: every task is a combination.
    supsup: task t owns slot t.
    """
    if source == "supsup":
        return list(range(num_tasks))
    if source == "random":
        return [COMBINATION] * num_tasks
    if source == "homogeneous":
        return [0] + [COMBINATION] * (num_tasks - 1)
    chosen = list(range(min(num_impressions, num_tasks))) if impression_tasks is None else list(impression_tasks)
    bad = [t for t in chosen if not 0 <= t < num_tasks]
    if bad or len(set(chosen)) != len(chosen) or not chosen:
        raise ValueError(f"impression_tasks={list(impression_tasks or [])} must name distinct tasks in "
                         f"0..{num_tasks - 1} (at least one)")
    if 0 not in chosen:
        raise ValueError(f"impression_tasks={chosen} must include task 0: the first task has no impression "
                         "to combine")
    slots = [PENDING if adaptive else COMBINATION] * num_tasks
    for slot, task in enumerate(sorted(chosen)):
        slots[task] = slot
    return slots


class TaskTable(nn.Module):
    """Per-task placement and coefficients of a stream of ``len(slots)`` tasks over a bank of ``capacity``.

    Args:
        slots: initial placement per task (see :func:`plan_slots`).
        capacity: bank slots every masked layer has.
        rule: the combination rule that lays out each layer's coefficients.
        weight_shapes: shapes of the masked layers' weights, in the network's order.
        hybrid_heads: keep room for a dedicated last-layer mask per task (see :mod:`impress_lightning.hybrid`).
        signatures: keep room for each task's feature signature (:mod:`impress_lightning.inference.features`).
    """

    def __init__(self, slots: Sequence[int], capacity: int, rule: CombinationRule | None,
                 weight_shapes: Sequence[Sequence[int]], hybrid_heads: bool = False, signatures: bool = False) -> None:
        super().__init__()
        self.rule = rule or PerLayer()
        self.capacity = capacity
        self.weight_shapes = [tuple(int(d) for d in s) for s in weight_shapes]
        # A layout packs rows of one coefficient per bank slot back to back, so a task's flat vector is its
        # rows: [size / width, width] (what the penalty reads in one pass).
        self._row_width = max(capacity, 1)
        self.slices = self.rule.layout(self.weight_shapes, self._row_width)
        self.size = max(s.offset + s.numel for s in self.slices)
        if any(s.shape[-1] != self._row_width for s in self.slices) or self.size % self._row_width:
            raise ValueError(f"{self.rule!r}.layout must give every layer coefficient rows of {self._row_width} "
                             "values (one per bank slot), packed back to back")
        self.register_buffer("slots", torch.tensor(list(slots), dtype=torch.long))
        # How many bank masks each task's coefficients cover (the bank size when the task started).
        self.register_buffer("mask_count", torch.zeros(len(slots), dtype=torch.long))
        self.register_buffer("num_learned", torch.zeros((), dtype=torch.long))
        # The best stored impression's accuracy on the task's probe examples when it started (-1: not probed);
        # it says why an adaptive-bank task became what it is.
        self.register_buffer("probe_accuracy", torch.full((len(slots),), -1.0))
        # Every coefficient vector exists and requires grad from the start (DDP-safe); only the current
        # task's ever receives a gradient.
        self.coefficients = nn.ParameterList([nn.Parameter(torch.zeros(self.size)) for _ in slots])
        # Hybrid heads: per task its own last-layer mask, whether it is kept, and the validation accuracy of
        # the plain combination and of the hybrid that decided it (-1: not decided).
        head = self.weight_shapes[-1] if hybrid_heads else (0,)
        self.register_buffer("head_masks", torch.zeros(len(slots) if hybrid_heads else 0, *head, dtype=torch.bool))
        self.register_buffer("head_kept", torch.zeros(len(slots), dtype=torch.bool))
        self.register_buffer("head_validation", torch.full((len(slots), 2), -1.0))
        # Each task's mean softmax entropy on its own probe examples when it was learned (-1: not measured):
        # the baseline calibrated task inference compares it with.
        self.register_buffer("baseline_entropy", torch.full((len(slots),), -1.0, dtype=torch.float64))
        # Feature signatures (allocated only when recorded): per task one float16 per first-layer output unit.
        width = self.weight_shapes[0][0] if signatures else 0
        self.register_buffer("feature_signatures", torch.zeros(len(slots) if signatures else 0, width,
                                                               dtype=torch.float16))
        self.register_buffer("has_signature", torch.zeros(len(slots), dtype=torch.bool))

    # Buffers newer than the first checkpoints: a checkpoint written before one existed loads it with the value
    # that means "none" (no head, baseline or signature could be recorded then), so older runs stay testable
    # and resumable.
    _LATER_BUFFERS = ("head_masks", "head_kept", "head_validation", "baseline_entropy", "feature_signatures",
                      "has_signature")

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        for name in self._LATER_BUFFERS:
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ----- placement ---------------------------------------------------------------------------------------
    @property
    def num_tasks(self) -> int:
        return len(self.coefficients)

    def slot_list(self) -> tuple[int, ...]:
        """Placement codes of every task (the task schedule's input)."""
        return tuple(int(s) for s in self.slots.tolist())

    def slot_of(self, task: int) -> int | None:
        """Bank slot that evaluates ``task`` by itself, or None for a combination (or pending) task."""
        slot = int(self.slots[task])
        return slot if slot >= 0 else None

    def place(self, task: int, slot: int | None) -> None:
        """Record the decision for pending ``task``: impression in ``slot``, or a combination (None)."""
        self.slots[task] = COMBINATION if slot is None else slot

    # ----- coefficients ------------------------------------------------------------------------------------
    def layer_views(self, flat: Tensor, n: int) -> tuple[Tensor, ...]:
        """One coefficient tensor per masked layer, over the first ``n`` bank masks."""
        return tuple(flat[s.offset:s.offset + s.numel].view(s.shape)[..., :n] for s in self.slices)

    def start_coefficients(self, task: int, n: int, best_slot: int | None) -> None:
        """Initialise combination ``task`` over ``n`` masks: the one-hot of ``best_slot`` (it reproduces that
        impression exactly), or uniform 1/n where ``best_slot`` is None."""
        if not 1 <= n <= self.capacity:
            raise ValueError(f"task {task} would combine {n} masks; the bank has {self.capacity} slots")
        with torch.no_grad():
            param = self.coefficients[task]
            if best_slot is None:
                start = torch.zeros(self.size)
                for s in self.slices:
                    start[s.offset:s.offset + s.numel].view(s.shape)[..., :n] = 1.0 / n
            else:
                start = one_hot_coefficients(self.slices, best_slot, self.size)
            param.copy_(start.to(param.device, param.dtype))
        self.mask_count[task] = n

    def finish(self, task: int) -> None:
        """Round a finished combination task's coefficients to their stored precision."""
        if self.slot_of(task) is None:
            with torch.no_grad():
                param = self.coefficients[task]
                param.copy_(self.rule.round_to_storage(param))

    def selection(self, task: int) -> Selection:
        """The weights of ``task``: its impression, or its combination over the masks it was learned with."""
        slot = self.slot_of(task)
        if slot is not None:
            return Impression(slot)
        n = int(self.mask_count[task])
        if n < 1:
            raise RuntimeError(f"task {task} has no coefficients yet (it has not started)")
        combine = Combine(self.layer_views(self.coefficients[task], n))
        return self.with_head(task, Masked(self.head_masks[task]), combine) if self.head_kept[task] else combine

    def with_head(self, task: int, head: Selection, combine: Combine | None = None) -> Layerwise:
        """Combination ``task`` below ``head`` on the last layer (a hybrid head, or the mask a head stage
        learns); without ``combine`` the coefficients are detached (frozen while the head learns)."""
        if combine is None:
            n = int(self.mask_count[task])
            combine = Combine(tuple(v.detach() for v in self.layer_views(self.coefficients[task], n)))
        return Layerwise((combine,) * (len(self.slices) - 1) + (head,))

    def record_head(self, task: int, mask: Tensor, kept: bool, combination_accuracy: float,
                    hybrid_accuracy: float) -> None:
        """Record the hybrid-head decision of combination ``task`` (the mask is stored only when kept)."""
        if self.head_masks.shape[0] == 0:
            raise RuntimeError("this task table has no room for head masks (built without hybrid_heads)")
        self.head_masks[task] = mask.bool() if kept else False
        self.head_kept[task] = kept
        self.head_validation[task] = torch.tensor([combination_accuracy, hybrid_accuracy])

    def record_signature(self, task: int, signature: Tensor) -> None:
        """Store ``task``'s feature signature (``[C]``, kept in float16)."""
        if self.feature_signatures.shape[0] == 0:
            raise RuntimeError("this task table has no room for feature signatures (built without signatures)")
        self.feature_signatures[task] = signature.to(self.feature_signatures.dtype)
        self.has_signature[task] = True

    def penalty(self, task: int) -> Tensor:
        """``Σ_rows (‖α_row‖₁ − 1)²`` over every coefficient row of ``task`` (a layer, or one output neuron)."""
        rows = self.coefficients[task].view(-1, self._row_width)[:, : int(self.mask_count[task])]
        # One reduction over all rows: ~6 autograd nodes instead of ~6 per layer (a measurable share of a
        # LeNet combination step); the gradient is the same, row by row.
        return ((rows.abs().sum(dim=1) - 1.0) ** 2).sum()

    def kspace_rows(self, count: int, n: int) -> tuple[Tensor, ...]:
        """Per masked layer, the coefficients ``[count, *shape]`` of tasks ``0..count-1`` over the first ``n``
        bank masks: one-hot rows for impression tasks, the learned coefficients (zero-padded to n) otherwise.
        The superposition Σ_t β_t rows[t] is then one combination over n masks (task inference). A task
        with a hybrid head is represented by its plain combination (its head mask is outside the K-space)."""
        device = self.coefficients[0].device
        rows = []
        for task in range(count):
            slot = self.slot_of(task)
            if slot is not None:
                flat = one_hot_coefficients(self.slices, slot, self.size).to(device)
            else:
                mask_count = int(self.mask_count[task])
                flat = self.coefficients[task].detach().clone()
                for s in self.slices:
                    flat[s.offset:s.offset + s.numel].view(s.shape)[..., mask_count:] = 0.0
            rows.append(flat)
        stacked = torch.stack(rows) if rows else torch.zeros(0, self.size, device=device)
        return tuple(stacked[:, s.offset:s.offset + s.numel].view(-1, *s.shape)[..., :n] for s in self.slices)

    def layer_summary(self, task: int, n: int) -> Tensor:
        """``[L, n]`` coefficients of combination ``task`` for plots: per layer its α (per-neuron rows
        averaged over the neurons), zero-padded to the ``n`` masks stored now."""
        count = int(self.mask_count[task])
        views = self.layer_views(self.coefficients[task].detach(), count)
        out = torch.zeros(len(views), n)
        for i, view in enumerate(views):
            out[i, :count] = view.reshape(-1, count).mean(dim=0).cpu()
        return out

    # ----- storage -----------------------------------------------------------------------------------------
    def coefficient_count(self, task: int) -> int:
        """Floats combination ``task`` stores (shared slices counted once)."""
        n = int(self.mask_count[task])
        unique = {(s.offset, s.shape) for s in self.slices}
        return sum(math.prod(shape[:-1]) * n for _, shape in unique)

    def storage(self, task: int, mask_numels: Sequence[int]) -> dict[str, int]:
        """What ``task`` trained and what it keeps: ``trainable_parameters`` and ``stored_bytes`` (its bit-packed
        mask, or its coefficients at the rule's precision; plus its feature signature where one is recorded)."""
        signature = self.feature_signatures.shape[1] * 2 if self.has_signature[task] else 0  # float16 values
        if self.slot_of(task) is not None:
            return {"trainable_parameters": int(sum(mask_numels)),
                    "stored_bytes": int(sum(packed_size(n) for n in mask_numels)) + signature}
        count = self.coefficient_count(task)
        tried = mask_numels[-1] if self.head_validation[task, 0] >= 0 else 0  # a head stage trained its scores
        kept = packed_size(mask_numels[-1]) if self.head_kept[task] else 0
        return {"trainable_parameters": count + tried,
                "stored_bytes": count * self.rule.bytes_per_value + kept + signature}

