"""In-memory task datasets, per-batch augmentation and the collate step that normalises a batch.

Images stay uint8 until a batch is formed; the collate turns the batch into float32 normalised [B, C, H, W].
Augmentation randomness depends only on (seed, task, epoch, the batch's first example), never on worker
count, process or global RNG state, so a resumed run sees bit-identical batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from impress_lightning.data.seeding import generator


class ImageBatch(NamedTuple):
    """A batch fetched in one indexing operation: uint8 images [B, C, H, W] and int64 labels [B]."""

    images: Tensor
    labels: Tensor


@dataclass(frozen=True)
class CropFlip:
    """Random crop back to the original size after zero-padding by ``pad`` pixels, then (when ``flip``) a
    horizontal flip with probability 1/2: the standard CIFAR training augmentation, applied to a whole batch.
    """

    pad: int = 4
    flip: bool = True

    def __call__(self, images: Tensor, gen: torch.Generator) -> Tensor:
        """Augmented copy of uint8 ``images`` [B, C, H, W], every example with its own offsets and flip."""
        b, c, h, w = images.shape
        padded = F.pad(images, (self.pad,) * 4)
        top = torch.randint(0, 2 * self.pad + 1, (b,), generator=gen)
        left = torch.randint(0, 2 * self.pad + 1, (b,), generator=gen)
        rows = (top[:, None] + torch.arange(h))[:, None, :, None]
        cols = (left[:, None] + torch.arange(w))[:, None, None, :]
        out = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
        if self.flip:
            flipped = torch.rand(b, generator=gen) < 0.5
            out = torch.where(flipped[:, None, None, None], out.flip(-1), out)
        return out


class TaskTensors(Dataset):
    """The examples of one task held as tensors: uint8 images [N, C, H, W] and int64 labels [N].

    ``__getitems__`` returns a whole :class:`ImageBatch` in one indexing operation (the DataLoader uses it),
    and applies ``augment`` with a generator seeded from (``seed``, first index of the batch): within an epoch
    every index is fetched once, so each batch gets its own reproducible randomness.

    Args:
        images: uint8 images [N, C, H, W].
        labels: int64 labels [N].
        augment: per-batch training augmentation, or None.
        seed: seed of the augmentation (derive it from run seed, task and epoch).
        augment_block: draw the augmentation separately for every block of this many consecutive examples of
            a fetched batch, each seeded from its own first index; None draws once per fetched batch. A loader
            that fetches several optimisation batches at once sets it to the optimisation batch size, so every
            optimisation batch is augmented exactly as if it had been fetched alone.
    """

    def __init__(self, images: Tensor, labels: Tensor, augment: CropFlip | None = None, seed: int = 0,
                 augment_block: int | None = None) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images, self.labels = images, labels.to(torch.int64)
        if augment_block is not None and augment_block < 1:
            raise ValueError(f"augment_block={augment_block} must be >= 1 (or None)")
        self.augment, self.seed, self.augment_block = augment, seed, augment_block

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        batch = self.__getitems__([index])
        return batch.images[0], batch.labels[0]

    def __getitems__(self, indices: Sequence[int]) -> ImageBatch:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        images, labels = self.images.index_select(0, idx), self.labels.index_select(0, idx)
        if self.augment is not None and len(indices) > 0:
            block = self.augment_block or len(indices)
            parts = [self.augment(part, generator(self.seed, int(first)))
                     for part, first in zip(images.split(block), idx[::block].tolist())]
            images = parts[0] if len(parts) == 1 else torch.cat(parts)
        return ImageBatch(images, labels)


class NormalizeCollate:
    """Collate function: stacks uint8 examples (or takes a ready :class:`ImageBatch`) and returns
    ``(x, y)`` with x float32 [B, C, H, W] normalised per channel and y int64 [B].

    Args:
        mean: per-channel mean of the [0, 1]-scaled images.
        std: per-channel standard deviation of the [0, 1]-scaled images.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std):
            raise ValueError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, batch: ImageBatch | Sequence[tuple[Any, Any]]) -> tuple[Tensor, Tensor]:
        if isinstance(batch, ImageBatch):
            images, labels = batch
        else:
            images = torch.stack([torch.as_tensor(x) for x, _ in batch])
            labels = torch.as_tensor([int(y) for _, y in batch], dtype=torch.int64)
        return self.normalize(images), labels

    def normalize(self, images: Tensor) -> Tensor:
        """float32 normalised copy of uint8 ``images`` [B, C, H, W]."""
        if images.dtype != torch.uint8:
            raise ValueError(f"expected uint8 images, got {images.dtype}")
        return images.to(torch.float32).div_(255.0).sub_(self.mean).div_(self.std)  # in place: one new tensor


class GroupCollate:
    """Collate function of a loader that fetches ``batch_size`` x n examples at once: normalises them in one
    operation and returns the list of n ``(x, y)`` optimisation batches of ``batch_size`` (the last may be
    smaller), views of one tensor, in order. The model runs one optimiser step on each.

    Args:
        collate: the per-batch collate (normalisation) applied to the whole fetch.
        batch_size: examples per optimisation batch.
    """

    def __init__(self, collate: NormalizeCollate, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.collate, self.batch_size = collate, batch_size

    def __call__(self, batch: ImageBatch | Sequence[tuple[Any, Any]]) -> list[tuple[Tensor, Tensor]]:
        images, labels = self.collate(batch)
        return list(zip(images.split(self.batch_size), labels.split(self.batch_size)))
