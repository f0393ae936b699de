"""Continual-learning metrics as small pure functions on the accuracy matrix.

``R[i][j]`` is the accuracy (a fraction in [0, 1]) on task ``j`` measured right after training task ``i``;
``None`` marks a task not evaluated at that point. ``R`` has one row per task trained so far, so while the
stream is running it has fewer rows than columns. ``T = len(R)`` below is the number of tasks trained; the
entries ``R[i][j]`` with ``j <= i`` (the tasks seen by then) must all be numbers. Entries above the diagonal
(a task evaluated before it was trained) are optional and only forward transfer reads them.

Sums use :func:`math.fsum` of exact differences, so a method that never forgets (SupSup, ImpressLearn) gets
a backward transfer and forgetting of exactly ``0.0``, not float noise.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, Sequence

from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

AccuracyMatrix = Sequence[Sequence["float | None"]]


def _is_list_like(obj: Any) -> bool:
    """True for lists, tuples, numpy arrays and the like (but not strings)."""
    return not isinstance(obj, (str, bytes)) and hasattr(obj, "__len__") and hasattr(obj, "__iter__")


def _check_value(value: Any, where: str) -> float | None:
    """``value`` as a float in [0, 1] (or None), with a one-line error naming ``where`` otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{where} = {value!r} must be a float accuracy in [0, 1] or None")
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{where} = {value} is outside [0, 1]: pass accuracies as fractions, not percentages")
    return value


def validate_matrix(R: AccuracyMatrix, allow_gaps: bool = False) -> list[list[float | None]]:
    """Check ``R`` and return it as a list of float rows.

    Raises a one-line ``ValueError``/``TypeError`` for an empty or ragged matrix, more rows than columns,
    values outside [0, 1], or a missing (``None``) entry on or below the diagonal (below it only unless
    ``allow_gaps``: a matrix whose old tasks were not re-evaluated after every task, see
    :func:`latest_measured`; the diagonal is always required).
    """
    if not _is_list_like(R):
        raise TypeError(f"accuracy matrix R must be a list of rows, got {type(R).__name__}")
    if len(R) == 0:
        raise ValueError("accuracy matrix R is empty: train (and evaluate) at least one task first")
    rows: list[list[float | None]] = []
    width = None
    for i, row in enumerate(R):
        if not _is_list_like(row):
            raise TypeError(f"R[{i}] must be a list of accuracies, got {type(row).__name__}")
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise ValueError(f"R is ragged: R[0] has {width} columns but R[{i}] has {len(row)}; "
                             "pad unseen tasks with None")
        # The usual cells (None, or a float in [0, 1]) pass without a call or the name of the cell being built.
        rows.append([v if v is None or (type(v) is float and 0.0 <= v <= 1.0) else _check_value(v, f"R[{i}][{j}]")
                     for j, v in enumerate(row)])
    assert width is not None  # R is non-empty, so row 0 set it
    if len(rows) > width:
        raise ValueError(f"R has {len(rows)} rows but only {width} columns: need one column per task "
                         "(rows = tasks trained so far)")
    for i, row in enumerate(rows):
        for j in range(i, i + 1) if allow_gaps else range(i + 1):
            if row[j] is None:
                raise ValueError(f"R[{i}][{j}] is None but task {j} was trained by then: evaluate it after "
                                 f"task {i}")
    return rows


def latest_measured(R: AccuracyMatrix) -> list[list[float | None]]:
    """``R`` with every gap below the diagonal filled by that task's latest earlier measurement.

    For streams that re-evaluate only some old tasks after each task (``RetentionEvaluator(old_tasks=...)``):
    the metrics then read "the latest measured accuracy" of a task not evaluated at that point. A row that
    evaluated every seen task (the stream's last one always does) is left as measured, so the final average
    accuracy and BWT are exact; forgetting takes its maximum over the measured points only.
    """
    rows = validate_matrix(R, allow_gaps=True)
    filled: list[list[float | None]] = []
    for i, row in enumerate(rows):
        previous = filled[-1] if filled else row
        filled.append([previous[j] if j < i and v is None else v for j, v in enumerate(row)])
    return filled


def _mean(values: Sequence[float]) -> float:
    """Mean with an exactly rounded sum (so all-zero inputs give exactly 0.0)."""
    return math.fsum(values) / len(values)


def average_accuracy(R: AccuracyMatrix) -> float:
    """Average accuracy over the tasks seen so far: ``ACC = (1/T) * sum_{j<T} R[T-1][j]``."""
    return _average_accuracy(validate_matrix(R))


def _average_accuracy(rows: list[list[float | None]]) -> float:
    T = len(rows)
    return _mean([rows[T - 1][j] for j in range(T)])


def row_average_accuracy(R: AccuracyMatrix) -> list[float]:
    """Average accuracy after each task: element ``i`` is ``(1/(i+1)) * sum_{j<=i} R[i][j]``."""
    return _row_average_accuracy(validate_matrix(R))


def _row_average_accuracy(rows: list[list[float | None]]) -> list[float]:
    return [_mean(row[: i + 1]) for i, row in enumerate(rows)]


def backward_transfer(R: AccuracyMatrix) -> float:
    """Backward transfer ``BWT = (1/(T-1)) * sum_{j<T-1} (R[T-1][j] - R[j][j])``.

    Negative means the later tasks hurt the earlier ones; ``0.0`` when fewer than 2 tasks were trained.
    """
    return _backward_transfer(validate_matrix(R))


def _backward_transfer(rows: list[list[float | None]]) -> float:
    T = len(rows)
    if T < 2:
        return 0.0
    return _mean([rows[T - 1][j] - rows[j][j] for j in range(T - 1)])


def forgetting(R: AccuracyMatrix) -> float:
    """Average forgetting ``F = (1/(T-1)) * sum_{j<T-1} max_{j<=i<T-1} (R[i][j] - R[T-1][j])``.

    The drop from the best accuracy task ``j`` ever had to its final accuracy (negative only if every
    task ended above its earlier best); ``0.0`` when fewer than 2 tasks were trained.
    """
    return _forgetting(validate_matrix(R))


def _forgetting(rows: list[list[float | None]]) -> float:
    T = len(rows)
    if T < 2:
        return 0.0
    last = rows[T - 1]
    return _mean([max(rows[i][j] - last[j] for i in range(j, T - 1)) for j in range(T - 1)])


def forward_transfer(R: AccuracyMatrix, before: Sequence[float | None]) -> float | None:
    """Forward transfer ``FWT = mean_{j>0} (R[j-1][j] - before[j])`` over the ``j`` where both are known.

    ``before[j]`` is the accuracy on task ``j`` of a reference that never saw it (chance level or a
    random-init model); ``R[j-1][j]`` is task ``j`` evaluated just before training it. Returns ``None``
    when no term is defined (nothing was evaluated ahead of training).
    """
    return _forward_transfer(validate_matrix(R), before)


def _forward_transfer(rows: list[list[float | None]], before: Sequence[float | None]) -> float | None:
    width = len(rows[0])
    if not _is_list_like(before) or len(before) != width:
        raise ValueError(f"before must be a list of {width} accuracies (one per column of R, None where "
                         f"unknown), got {before!r}")
    reference = [_check_value(v, f"before[{j}]") for j, v in enumerate(before)]
    terms = [rows[j - 1][j] - reference[j] for j in range(1, min(len(rows) + 1, width))
             if rows[j - 1][j] is not None and reference[j] is not None]
    return _mean(terms) if terms else None


def summarise(R: AccuracyMatrix, before: Sequence[float | None] | None = None) -> dict[str, Any]:
    """All metrics of ``R`` in one dict.

    Keys: ``average_accuracy``, ``bwt``, ``forgetting``, ``row_average_accuracy`` (list, one entry per
    trained task) and, when ``before`` is given, ``fwt`` (may be ``None``, see :func:`forward_transfer`).
    """
    rows = validate_matrix(R)  # once: it reads every cell, and retention summarises after every task
    summary: dict[str, Any] = {
        "average_accuracy": _average_accuracy(rows),
        "bwt": _backward_transfer(rows),
        "forgetting": _forgetting(rows),
        "row_average_accuracy": _row_average_accuracy(rows),
    }
    if before is not None:
        summary["fwt"] = _forward_transfer(rows, before)
    return summary


def task_accuracy(num_classes: int) -> Metric:
    """Top-1 accuracy over all examples of one task (micro average), synced across DDP ranks."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2 (the task head's output size), got {num_classes!r}")
    return MulticlassAccuracy(num_classes=num_classes, average="micro")


def storage_bytes_of_floats(n: int, dtype_bytes: int = 4) -> int:
    """Bytes needed to store ``n`` floats of ``dtype_bytes`` each (e.g. a task's ``L*K`` α coefficients)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int (number of stored floats), got {n!r}")
    if dtype_bytes not in (1, 2, 4, 8):
        raise ValueError(f"dtype_bytes must be 1, 2, 4 or 8 (bytes per float), got {dtype_bytes!r}")
    return n * dtype_bytes
