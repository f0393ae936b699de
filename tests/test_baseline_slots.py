"""The best-single-impression baseline with a cap on how many stored impressions it evaluates."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from impress_lightning.callbacks import RetentionEvaluator
from impress_lightning.callbacks.baseline import best_single_impression

ACCURACY_OF_SLOT = [0.3, 0.9, 0.5, 0.2, 0.6, 0.6, 0.1]  # what each stored impression scores on the task


class SlotEcho:
    """A stand-in network whose logits name the impression it runs: class ``slot`` wins."""

    bn_names: list[str] = []

    def __call__(self, x: torch.Tensor, selection, bn_task=None) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.tensor([selection.slot]), len(ACCURACY_OF_SLOT)).float()


def stream_module(stored: int) -> SimpleNamespace:
    """A combination task that has ``stored`` impressions before it."""
    table = SimpleNamespace(slot_of=lambda task: None, mask_count=torch.tensor([0, stored]))
    return SimpleNamespace(table=table, net=SlotEcho(), num_classes=len(ACCURACY_OF_SLOT))


def probe(max_slots: int | None) -> tuple[dict, list[int]]:
    evaluated: list[int] = []

    def evaluate(predict) -> float:
        slot = int(predict(torch.zeros(1, 4))[0])
        evaluated.append(slot)
        return ACCURACY_OF_SLOT[slot]

    return best_single_impression(stream_module(len(ACCURACY_OF_SLOT)), 1, evaluate, max_slots), evaluated


def test_every_stored_impression_is_evaluated_by_default() -> None:
    best, evaluated = probe(None)
    assert evaluated == list(range(7))
    assert best == {"accuracy": 0.9, "slot": 1, "probed": 7}


def test_a_cap_evaluates_only_the_most_recent_impressions() -> None:
    best, evaluated = probe(3)
    assert evaluated == [4, 5, 6]
    assert best == {"accuracy": 0.6, "slot": 4, "probed": 3}  # a tie keeps the earlier slot
    assert probe(50)[1] == list(range(7))  # a cap above the bank's size evaluates all


def test_the_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="baseline_slots=0 must be >= 1"):
        RetentionEvaluator(baseline_slots=0)
