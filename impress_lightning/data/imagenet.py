"""ImageNet-style ImageFolder trees (``<data_dir>/train/<class>/*``, ``<data_dir>/val/<class>/*``), read from
disk per example, never loaded into memory. Only class-split task streams are supported.

Transforms are the standard ones (RandomResizedCrop 224 + horizontal flip for training, Resize 256 +
CenterCrop 224 for evaluation) and yield uint8 tensors; the collate step normalises them like every other
dataset. Each training example's random crop and flip come from a seed derived from (run seed, task, epoch,
example), so resumed runs and any worker count see identical batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.transforms import v2

from impress_lightning.data.base import DatasetInfo, Provider, require_folder
from impress_lightning.data.families import ClassSplit
from impress_lightning.data.seeding import AUGMENT, HOLDOUT, derive_seed, generator

IMAGENET_FOLDER = DatasetInfo("imagenet_folder", num_classes=None, input_shape=(3, 224, 224),
                              mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), augmentation=None,
                              augment_by_default=True, in_memory=False)


def train_transform(size: int = 224) -> v2.Compose:
    """RandomResizedCrop(size) + horizontal flip, to a uint8 tensor [3, size, size]."""
    return v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), v2.PILToTensor()])


def eval_transform(size: int = 224) -> v2.Compose:
    """Resize(size·8/7, i.e. 256 for 224) + CenterCrop(size), to a uint8 tensor [3, size, size]."""
    return v2.Compose([v2.Resize(size * 8 // 7, antialias=True), v2.CenterCrop(size), v2.PILToTensor()])


def _missing(data_dir: Path) -> str:
    return (f"ImageFolder data not found: {Path(data_dir) / 'train'} and {Path(data_dir) / 'val'} must each hold "
            "one sub-folder of images per class (the same class folders in both)")


def count_classes(data_dir: Path) -> int:
    """Class folders under ``<data_dir>/train`` (a directory listing, no image is read)."""
    train = Path(data_dir) / "train"
    if not train.is_dir():
        raise FileNotFoundError(_missing(data_dir))
    return sum(1 for entry in train.iterdir() if entry.is_dir())


class FolderTask(Dataset):
    """The examples of one task of an ImageFolder: ``samples[indices[i]]`` loaded, transformed and relabelled.

    Args:
        samples: (path, class id) pairs of the whole folder.
        loader: reads one image file (PIL RGB).
        indices: which samples belong to the task.
        remap: original class id → task-local label.
        transform: PIL image → uint8 tensor.
        seed: when set, example i is transformed under torch's RNG seeded from (seed, i).
    """

    def __init__(self, samples: list[tuple[str, int]], loader: Callable[[str], Any], indices: Tensor,
                 remap: dict[int, int], transform: Callable[[Any], Tensor], seed: int | None = None) -> None:
        self.samples, self.loader, self.indices = samples, loader, indices.tolist()
        self.remap, self.transform, self.seed = remap, transform, seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, target = self.samples[self.indices[index]]
        image = self.loader(path)
        if self.seed is None:
            return self.transform(image), self.remap[target]
        with torch.random.fork_rng(devices=[]):  # leaves the caller's RNG untouched
            torch.manual_seed(derive_seed(self.seed, index))
            return self.transform(image), self.remap[target]


class FolderSource:
    """Per-task datasets of an ImageFolder tree split into classes by ``family``.

    Args:
        data_dir: folder holding ``train/`` and ``val/`` (``val/`` is the test split).
        family: the class split.
        val_fraction: seeded fraction of ``train/`` held out for validation (evaluation transforms).
        train_subset: cap on training examples per task, or None.
        seed: run seed (holdout, augmentation).
        image_size: side of the square crops.
    """

    def __init__(self, data_dir: Path, family: ClassSplit, val_fraction: float, train_subset: int | None,
                 seed: int, image_size: int = 224) -> None:
        roots = [Path(data_dir) / "train", Path(data_dir) / "val"]
        if not all(root.is_dir() for root in roots):
            raise FileNotFoundError(_missing(data_dir))
        self.train_folder, self.test_folder = (datasets.ImageFolder(str(root)) for root in roots)
        if self.train_folder.classes != self.test_folder.classes:
            raise ValueError(f"{roots[0]} and {roots[1]} hold different class folders: they must match")
        self.family, self.train_subset, self.seed = family, train_subset, seed
        self._train_tf, self._eval_tf = train_transform(image_size), eval_transform(image_size)
        self._train_targets = torch.tensor(self.train_folder.targets, dtype=torch.int64)
        self._test_targets = torch.tensor(self.test_folder.targets, dtype=torch.int64)
        n = len(self._train_targets)
        order = torch.randperm(n, generator=generator(seed, HOLDOUT))
        n_val = int(round(val_fraction * n))
        self._val_index, self._train_index = order[:n_val].sort().values, order[n_val:]

    def _task(self, task: int, split: Literal["train", "val", "test"], transform: Callable[[Any], Tensor],
              seed: int | None) -> FolderTask:
        folder = self.test_folder if split == "test" else self.train_folder
        targets = self._test_targets if split == "test" else self._train_targets
        index = {"train": self._train_index, "val": self._val_index}.get(split, torch.arange(len(targets)))
        index = index[self.family.keep(targets[index], task)]
        if split == "train" and self.train_subset is not None:
            index = index[: self.train_subset]
        remap = {c: j for j, c in enumerate(self.family.classes_of(task))}
        return FolderTask(folder.samples, folder.loader, index, remap, transform, seed)

    def train_dataset(self, task: int, epoch: int, augment: bool, augment_block: int | None = None) -> FolderTask:
        """``task``'s training examples (random crops and flips when ``augment``, else evaluation transforms).

        ``augment_block`` is accepted for parity with :class:`InMemorySource` and needs nothing here: every
        example is augmented under its own seed, however the loader groups them."""
        if not augment:
            return self._task(task, "train", self._eval_tf, None)
        return self._task(task, "train", self._train_tf, derive_seed(self.seed, AUGMENT, task, epoch))

    def eval_dataset(self, task: int, split: Literal["val", "test"]) -> FolderTask:
        """``task``'s validation (held out of ``train/``) or test (``val/``) examples, evaluation transforms."""
        return self._task(task, split, self._eval_tf, None)



def _prepare(data_dir: Path, download: bool) -> None:
    """ImageNet cannot be fetched automatically; only check that the folders are there."""
    require_folder(data_dir)
    if download:
        raise ValueError("download=true is not possible for imagenet_folder: place the ImageFolder trees under "
                         f"{Path(data_dir) / 'train'} and {Path(data_dir) / 'val'} and set download=false")


IMAGENET_FOLDER_PROVIDER = Provider(IMAGENET_FOLDER, prepare=_prepare, load=None)
