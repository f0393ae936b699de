"""InMemorySource: the seeded holdout, the training cap and the bounded task caches."""

from __future__ import annotations

import pytest
import torch

from impress_lightning.data import ClassSplit, PermutedPixels, TensorSplits
from impress_lightning.data.sources import InMemorySource


def _indexed_splits(n_train: int = 200, n_test: int = 50) -> TensorSplits:
    """Images whose first two pixels spell their example index (so every example is traceable)."""
    def images(n: int) -> torch.Tensor:
        x = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
        x[:, 0, 0, 0], x[:, 0, 0, 1] = torch.arange(n) // 256, torch.arange(n) % 256
        return x

    return TensorSplits(images(n_train), torch.arange(n_train) % 10, images(n_test), torch.arange(n_test) % 10)


class _Identity(PermutedPixels):
    """A family that leaves images alone, so the index pixels survive."""

    def apply(self, images: torch.Tensor, labels: torch.Tensor, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        return images, labels


def _ids(images: torch.Tensor) -> list[int]:
    return (images[:, 0, 0, 0].long() * 256 + images[:, 0, 0, 1].long()).tolist()


def _source(**kwargs: object) -> InMemorySource:
    options = dict(splits=_indexed_splits(), family=_Identity(), num_classes=10, val_fraction=0.2,
                   train_subset=None, seed=0, augmentation=None, eval_cache_bytes=1 << 30)
    options.update(kwargs)
    return InMemorySource(**options)  # type: ignore[arg-type]


def test_holdout_is_disjoint_complete_seeded_and_shared_by_all_tasks() -> None:
    source = _source()
    train, val = _ids(source.tensors(0, "train")[0]), _ids(source.tensors(0, "val")[0])
    assert len(val) == 40 and not set(train) & set(val) and sorted(train + val) == list(range(200))
    assert _ids(source.tensors(3, "val")[0]) == val
    assert _ids(_source().tensors(0, "val")[0]) == val
    assert _ids(_source(seed=1).tensors(0, "val")[0]) != val
    assert _ids(source.tensors(0, "test")[0]) == list(range(50))


def test_train_subset_is_a_seeded_random_subset_of_the_training_examples() -> None:
    full = set(_ids(_source().tensors(0, "train")[0]))
    capped = _ids(_source(train_subset=30).tensors(0, "train")[0])
    assert len(capped) == 30 and set(capped) <= full
    assert capped != sorted(capped), "a random subset, not the first 30 examples"


def test_class_split_validation_holds_only_the_task_classes() -> None:
    source = _source(family=ClassSplit(10, 2, seed=0))
    classes = source.family.label_map(1)
    images, labels = source.tensors(1, "val")
    assert set(labels.tolist()) <= {0, 1} and len(labels) > 0
    assert all(i % 10 in classes for i in _ids(images))


def test_only_a_couple_of_training_tasks_stay_cached() -> None:
    source = _source()
    for task in range(5):
        source.train_dataset(task, epoch=0, augment=False)
    assert len(source._train_cache) == 2
    first = source.tensors(4, "train")[0]
    assert source.tensors(4, "train")[0] is first, "the current task is served from the cache"


def test_labels_outside_the_dataset_classes_are_rejected() -> None:
    with pytest.raises(ValueError, match="train labels span 0..9, outside the dataset's 0..4"):
        _source(num_classes=5)


def test_evaluation_tensors_stay_cached_within_their_byte_budget() -> None:
    test_bytes = 50 * 16 + 50 * 8  # 50 test images of 4x4 uint8 and their int64 labels
    source = _source(eval_cache_bytes=3 * test_bytes)
    for task in range(5):
        source.tensors(task, "test")
    assert len(source._eval_cache) == 3  # the three most recent
    newest = source.tensors(4, "test")[0]
    assert source.tensors(4, "test")[0] is newest
    nothing = _source(eval_cache_bytes=0)
    first = nothing.tensors(0, "test")[0]
    assert len(nothing._eval_cache) == 0 and nothing.tensors(0, "test")[0] is not first
    assert torch.equal(nothing.tensors(0, "test")[0], first)  # rebuilt, the same tensors


def test_the_datamodule_passes_its_cache_budget_and_refuses_a_negative_one() -> None:
    from impress_lightning.data import EmbeddedDigits

    data = EmbeddedDigits(num_tasks=2, eval_cache_mib=0)
    data.setup()
    assert data.source._eval_cache.max_bytes == 0
    with pytest.raises(ValueError, match=r"eval_cache_mib=-1 must be >= 0"):
        EmbeddedDigits(num_tasks=2, eval_cache_mib=-1)
