"""Per-task datasets built from a base dataset held in memory, with small caches.

A task's tensors are built once (family applied to the whole split) and cached: at most a couple of tasks'
training tensors (36 rotated MNIST tasks would otherwise hold 1.7 GB), evaluation tensors within a byte
budget (the retention evaluator revisits every finished task after each new one).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Literal

import torch
from torch import Tensor

from impress_lightning.data.base import TensorSplits
from impress_lightning.data.families import TaskFamily
from impress_lightning.data.seeding import AUGMENT, HOLDOUT, derive_seed, generator
from impress_lightning.data.tensors import CropFlip, TaskTensors

Split = Literal["train", "val", "test"]
TRAIN_CACHE_TASKS = 2


class TensorLRU:
    """Least-recently-used cache of (images, labels) pairs, bounded by entry count and by bytes."""

    def __init__(self, max_items: int | None = None, max_bytes: int | None = None) -> None:
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: OrderedDict[object, tuple[Tensor, Tensor]] = OrderedDict()

    @staticmethod
    def _size(pair: tuple[Tensor, Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in pair)

    def get(self, key: object, build: Callable[[], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """The cached value of ``key``, building (and caching) it when absent."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = build()
        self._items[key] = value
        while self._items and (
            (self.max_items is not None and len(self._items) > self.max_items)
            or (self.max_bytes is not None and sum(map(self._size, self._items.values())) > self.max_bytes)
        ):
            self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)


class InMemorySource:
    """Builds every task's train / val / test tensors from ``splits`` with ``family``.

    The validation examples are a seeded ``val_fraction`` of the base training split, held out of every task
    (a class-split task's validation set is the held-out examples of its classes). ``train_subset`` caps each
    task's training examples (a seeded random subset).

    Args:
        splits: the base dataset in memory.
        family: how task t is derived from the base dataset.
        num_classes: classes of the base dataset (labels are checked against it).
        val_fraction: fraction of the base training split held out for validation.
        train_subset: cap on training examples per task, or None.
        seed: run seed (holdout, augmentation).
        augmentation: per-batch training augmentation used when ``train_dataset(..., augment=True)``.
        eval_cache_bytes: budget of the cached validation / test tensors (0: none cached); the datamodule's
            ``eval_cache_mib`` sets it.
    """

    def __init__(self, splits: TensorSplits, family: TaskFamily, num_classes: int, val_fraction: float,
                 train_subset: int | None, seed: int, augmentation: CropFlip | None, eval_cache_bytes: int) -> None:
        for name, labels in (("train", splits.train_labels), ("test", splits.test_labels)):
            if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
                raise ValueError(f"{name} labels span {int(labels.min())}..{int(labels.max())}, outside the "
                                 f"dataset's 0..{num_classes - 1}: the data files do not match the dataset")
        self.splits, self.family = splits, family
        self.train_subset, self.seed, self.augmentation = train_subset, seed, augmentation
        n = len(splits.train_labels)
        order = torch.randperm(n, generator=generator(seed, HOLDOUT))
        n_val = int(round(val_fraction * n))
        self._val_index = order[:n_val].sort().values
        self._train_index = order[n_val:]  # kept in seeded random order so a train_subset cap is a random subset
        self._train_cache = TensorLRU(max_items=TRAIN_CACHE_TASKS)
        self._eval_cache = TensorLRU(max_bytes=eval_cache_bytes)

    def _build(self, task: int, split: Split) -> tuple[Tensor, Tensor]:
        if split == "test":
            images, labels = self.splits.test_images, self.splits.test_labels
            index = torch.arange(len(labels))
        else:
            images, labels = self.splits.train_images, self.splits.train_labels
            index = self._train_index if split == "train" else self._val_index
        index = index[self.family.keep(labels[index], task)]
        if split == "train" and self.train_subset is not None:
            index = index[: self.train_subset]
        images, labels = self.family.apply(images.index_select(0, index), labels.index_select(0, index), task)
        return images.contiguous(), labels

    def tensors(self, task: int, split: Split) -> tuple[Tensor, Tensor]:
        """uint8 images and int64 (task-local) labels of ``task``'s ``split``."""
        cache = self._train_cache if split == "train" else self._eval_cache
        return cache.get((task, split), lambda: self._build(task, split))

    def train_dataset(self, task: int, epoch: int, augment: bool, augment_block: int | None = None) -> TaskTensors:
        """``task``'s training examples; augmentation seeded from (seed, task, epoch) when ``augment``, drawn per
        block of ``augment_block`` examples of a fetch (see :class:`TaskTensors`)."""
        images, labels = self.tensors(task, "train")
        aug = self.augmentation if augment else None
        return TaskTensors(images, labels, augment=aug, seed=derive_seed(self.seed, AUGMENT, task, epoch),
                           augment_block=augment_block)

    def eval_dataset(self, task: int, split: Literal["val", "test"]) -> TaskTensors:
        """``task``'s validation or test examples (no augmentation)."""
        images, labels = self.tensors(task, split)
        return TaskTensors(images, labels)
