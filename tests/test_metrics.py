"""Continual-learning metrics against hand-computed values, edge cases and bad input."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from impress_lightning.metrics import (
    average_accuracy,
    backward_transfer,
    forgetting,
    forward_transfer,
    row_average_accuracy,
    storage_bytes_of_floats,
    summarise,
    task_accuracy,
    validate_matrix,
)

# Task 0 peaks after task 1 (0.9) before dropping to 0.7, so forgetting (0.15) differs from -BWT (0.1).
R3 = [
    [0.8, 0.1, 0.2],
    [0.9, 0.95, 0.3],
    [0.7, 0.85, 0.9],
]


def test_full_matrix_matches_hand_computed_values() -> None:
    assert average_accuracy(R3) == pytest.approx((0.7 + 0.85 + 0.9) / 3)
    # ((0.7 - 0.8) + (0.85 - 0.95)) / 2
    assert backward_transfer(R3) == pytest.approx(-0.1)
    # task 0: max(0.8, 0.9) - 0.7 = 0.2; task 1: 0.95 - 0.85 = 0.1
    assert forgetting(R3) == pytest.approx(0.15)
    # task 1: 0.1 - 0.05; task 2: 0.3 - 0.2
    assert forward_transfer(R3, [0.5, 0.05, 0.2]) == pytest.approx(0.075)
    assert row_average_accuracy(R3) == pytest.approx([0.8, (0.9 + 0.95) / 2, (0.7 + 0.85 + 0.9) / 3])


def test_summarise_collects_every_metric() -> None:
    summary = summarise(R3, before=[0.5, 0.05, 0.2])
    assert summary["average_accuracy"] == average_accuracy(R3)
    assert summary["bwt"] == backward_transfer(R3)
    assert summary["forgetting"] == forgetting(R3)
    assert summary["row_average_accuracy"] == row_average_accuracy(R3)
    assert summary["fwt"] == forward_transfer(R3, [0.5, 0.05, 0.2])
    assert "fwt" not in summarise(R3)


def test_partial_matrix_uses_only_trained_rows() -> None:
    R = [[0.9, 0.3, None, None], [0.6, 0.8, None, None]]
    assert average_accuracy(R) == pytest.approx(0.7)
    assert backward_transfer(R) == pytest.approx(-0.3)
    assert forgetting(R) == pytest.approx(0.3)
    # Only task 1 was evaluated before training it; tasks 2 and 3 have no "just before" entry yet.
    assert forward_transfer(R, [0.25, 0.25, 0.25, 0.25]) == pytest.approx(0.05)
    assert forward_transfer(R, [0.25, None, 0.25, 0.25]) is None


def test_single_task() -> None:
    R = [[0.97, None, None]]
    summary = summarise(R, before=[0.1, 0.1, 0.1])
    assert summary["average_accuracy"] == pytest.approx(0.97)
    assert summary["bwt"] == 0.0 and summary["forgetting"] == 0.0
    assert summary["row_average_accuracy"] == pytest.approx([0.97])
    assert summary["fwt"] is None


@pytest.mark.parametrize("num_tasks", [2, 7, 30])
def test_zero_forgetting_gives_exact_zero(num_tasks: int) -> None:
    rng = random.Random(num_tasks)
    # Awkward floats (thirds, sums of tenths) that would leave noise if averaged the wrong way.
    final = [rng.random() / 3 + 0.1 + 0.2 for _ in range(num_tasks)]
    R = [[final[j] if j <= i else None for j in range(num_tasks)] for i in range(num_tasks)]
    bwt, forget = backward_transfer(R), forgetting(R)
    assert bwt == 0.0 and forget == 0.0
    assert math.copysign(1.0, bwt) == 1.0 and math.copysign(1.0, forget) == 1.0  # not -0.0


def test_improvement_gives_positive_bwt_and_negative_forgetting() -> None:
    R = [[0.5, None], [0.7, 0.9]]
    assert backward_transfer(R) == pytest.approx(0.2)
    assert forgetting(R) == pytest.approx(-0.2)


def test_accepts_numpy_rows_and_scalars() -> None:
    R = np.array([[0.8, 0.1, 0.2], [0.9, 0.95, 0.3], [0.7, 0.85, 0.9]], dtype=np.float32)
    assert backward_transfer(R) == pytest.approx(-0.1, abs=1e-6)
    assert validate_matrix(R)[2][1] == pytest.approx(0.85)


@pytest.mark.parametrize(
    ("R", "error", "match"),
    [
        ([], ValueError, "empty"),
        ("0.9", TypeError, "list of rows"),
        ([0.9, 0.8], TypeError, r"R\[0\]"),
        ([[0.9, None], [0.8]], ValueError, "ragged"),
        ([[0.9], [0.8]], ValueError, "2 rows but only 1 columns"),
        ([[0.9, None], [0.8, None]], ValueError, r"R\[1\]\[1\] is None"),
        ([[97.0, None], [95.0, 96.0]], ValueError, r"R\[0\]\[0\] = 97.0 .*percentages"),
        ([[float("nan")]], ValueError, r"R\[0\]\[0\]"),
        ([[0.9, None], [True, 0.8]], TypeError, r"R\[1\]\[0\]"),
        ([[0.9, None], ["0.8", 0.8]], TypeError, r"R\[1\]\[0\]"),
    ],
)
def test_invalid_matrix_is_rejected(R: object, error: type[Exception], match: str) -> None:
    for fn in (average_accuracy, backward_transfer, forgetting, summarise):
        with pytest.raises(error, match=match):
            fn(R)


def test_invalid_before_is_rejected() -> None:
    with pytest.raises(ValueError, match="before must be a list of 3"):
        forward_transfer(R3, [0.1, 0.1])
    with pytest.raises(ValueError, match=r"before\[2\]"):
        forward_transfer(R3, [0.1, 0.1, 10.0])


def test_errors_are_one_line() -> None:
    with pytest.raises(ValueError) as info:
        backward_transfer([[0.9, None], [0.8]])
    assert "\n" not in str(info.value)


def test_task_accuracy_is_micro_over_all_updates() -> None:
    torch.manual_seed(0)
    metric = task_accuracy(num_classes=3)
    logits = torch.randn(2, 16, 3)
    # Imbalanced targets: micro (per example) and macro (per class) averages then differ.
    targets = torch.tensor([0] * 12 + [1] * 3 + [2]).repeat(2, 1)
    for b in range(2):
        metric.update(logits[b], targets[b])
    expected = (logits.argmax(-1) == targets).float().mean()
    assert metric.compute().item() == pytest.approx(expected.item())


@pytest.mark.parametrize("num_classes", [1, 0, 2.5, True])
def test_task_accuracy_rejects_bad_num_classes(num_classes: object) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        task_accuracy(num_classes)  # type: ignore[arg-type]


def test_storage_bytes_of_floats() -> None:
    assert storage_bytes_of_floats(3 * 10) == 120
    assert storage_bytes_of_floats(7, dtype_bytes=2) == 14
    assert storage_bytes_of_floats(0) == 0
    with pytest.raises(ValueError, match="n must be"):
        storage_bytes_of_floats(-1)
    with pytest.raises(ValueError, match="dtype_bytes"):
        storage_bytes_of_floats(4, dtype_bytes=3)
