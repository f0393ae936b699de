"""Task families: how task ``t`` of a stream is made from a base dataset.

Each family is pure and seeded: ``apply(images, labels, task)`` transforms whole tensors once per task (never
per sample), and returns the same result on every process and every run with the same seed. Families work on
the uint8 images [N, C, H, W] before normalisation (see each class for why that is equivalent to, or better
than, transforming normalised images).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from impress_lightning.data.seeding import CLASS_ORDER, PERMUTATION, generator

# Rotating all of MNIST at once would materialise ~0.5 GB of float grids; chunks keep the peak small.
_ROTATION_CHUNK = 8192


class TaskFamily:
    """Base class of task families. Subclasses override :meth:`apply` and :meth:`describe`."""

    def keep(self, labels: Tensor, task: int) -> Tensor:
        """Boolean mask of the examples (given by their original ``labels``) that belong to ``task``."""
        return torch.ones_like(labels, dtype=torch.bool)

    def apply(self, images: Tensor, labels: Tensor, task: int) -> tuple[Tensor, Tensor]:
        """The examples of ``task``: transformed ``images`` [N, C, H, W] and their labels."""
        raise NotImplementedError

    def describe(self, task: int) -> str:
        """A short human-readable name of ``task`` (used in plots and logs)."""
        raise NotImplementedError

    def label_map(self, task: int) -> list[int] | None:
        """Original class id of each output of ``task``, or None when labels are unchanged."""
        return None

    def check_task(self, task: int, num_tasks: int | None = None) -> None:
        """Raise a one-line ValueError when ``task`` is not in 0..num_tasks-1."""
        if task < 0 or (num_tasks is not None and task >= num_tasks):
            bound = f"0..{num_tasks - 1}" if num_tasks is not None else ">= 0"
            raise ValueError(f"task={task} is out of range: {type(self).__name__} has tasks {bound}")


class PermutedPixels(TaskFamily):
    """Task t shuffles the pixel positions of every image with a fixed permutation drawn from (seed, t).

    Every task, task 0 included, is permuted. The same permutation of the H·W positions is used for every
    channel, so it commutes with per-channel normalisation: permuting the uint8 images (what we do) gives
    exactly the permuted normalised images that the method prescribes.

    Args:
        seed: seed of the permutations; the same seed always gives the same stream.
    """

    def __init__(self, seed: int = 0) -> None:
        if seed < 0:
            raise ValueError(f"seed={seed} must be >= 0")
        self.seed = seed

    def permutation(self, task: int, num_pixels: int) -> Tensor:
        """The permutation (int64 indices into the flattened H·W positions) of ``task``."""
        self.check_task(task)
        return torch.randperm(num_pixels, generator=generator(self.seed, PERMUTATION, task))

    def apply(self, images: Tensor, labels: Tensor, task: int) -> tuple[Tensor, Tensor]:
        n, c, h, w = images.shape
        perm = self.permutation(task, h * w)
        flat = images.reshape(n, c, h * w).index_select(2, perm)
        return flat.reshape(n, c, h, w), labels

    def describe(self, task: int) -> str:
        return f"permutation {task}"


class Rotations(TaskFamily):
    """Task i rotates every image counter-clockwise by i·360/num_tasks degrees (bilinear, corners filled 0).

    Applied to uint8 images so the uncovered corners are black, the background of MNIST-like data; rotating
    normalised images with fill 0 would paint them with the mean intensity instead.

    Args:
        num_tasks: number of tasks; the angle step is 360/num_tasks degrees (36 tasks → 10° steps).
    """

    def __init__(self, num_tasks: int) -> None:
        if num_tasks < 1:
            raise ValueError(f"num_tasks={num_tasks} must be >= 1")
        self.num_tasks = num_tasks

    def angle(self, task: int) -> float:
        """Rotation of ``task`` in degrees (counter-clockwise)."""
        self.check_task(task, self.num_tasks)
        return task * 360.0 / self.num_tasks

    def apply(self, images: Tensor, labels: Tensor, task: int) -> tuple[Tensor, Tensor]:
        angle = self.angle(task)
        if angle == 0.0 or len(images) == 0:
            return images, labels
        # The same pixels as TF.rotate(uint8 chunk, fill=0), about 3x faster: that call interpolates a channel
        # of ones beside every image to find the uncovered corners, then returns round(rotated x covered).
        # The covered fraction is the same for every image of the task, so it is interpolated once here
        # (grid_sample weighs each channel alike, so the product is bit-identical; tested against TF.rotate).
        bilinear = InterpolationMode.BILINEAR
        covered = TF.rotate(torch.ones((1, 1, *images.shape[-2:]), device=images.device), angle, interpolation=bilinear)
        chunks = [TF.rotate(chunk.float(), angle, interpolation=bilinear).mul_(covered).round_().to(images.dtype)
                  for chunk in images.split(_ROTATION_CHUNK)]
        return torch.cat(chunks), labels

    def describe(self, task: int) -> str:
        return f"rotate {self.angle(task):g}°"


class ClassSplit(TaskFamily):
    """Task t keeps the examples of its ``classes_per_task`` classes and relabels them 0..classes_per_task-1.

    The class order is a seeded permutation of all classes (or 0, 1, 2, ... when ``shuffle`` is False); task t
    takes the t-th block of it. Output j of task t is original class ``classes_of(t)[j]``.

    Args:
        num_classes: classes of the base dataset.
        classes_per_task: classes in each task.
        seed: seed of the class order.
        shuffle: permute the class order (else tasks take classes in their natural order).
    """

    def __init__(self, num_classes: int, classes_per_task: int, seed: int = 0, shuffle: bool = True) -> None:
        if classes_per_task < 1:
            raise ValueError(f"classes_per_task={classes_per_task} must be >= 1")
        if classes_per_task > num_classes:
            raise ValueError(f"classes_per_task={classes_per_task} exceeds the dataset's {num_classes} classes")
        self.num_classes, self.classes_per_task = num_classes, classes_per_task
        self.seed, self.shuffle = seed, shuffle
        self.num_tasks = num_classes // classes_per_task
        if shuffle:
            self.order = torch.randperm(num_classes, generator=generator(seed, CLASS_ORDER))
        else:
            self.order = torch.arange(num_classes)

    def classes_of(self, task: int) -> list[int]:
        """Original class ids of ``task``'s outputs, in output order."""
        self.check_task(task, self.num_tasks)
        k = self.classes_per_task
        return self.order[task * k:(task + 1) * k].tolist()

    def keep(self, labels: Tensor, task: int) -> Tensor:
        return torch.isin(labels, torch.tensor(self.classes_of(task), dtype=labels.dtype))

    def apply(self, images: Tensor, labels: Tensor, task: int) -> tuple[Tensor, Tensor]:
        keep = self.keep(labels, task)
        remap = torch.full((self.num_classes,), -1, dtype=torch.int64)
        remap[torch.tensor(self.classes_of(task))] = torch.arange(self.classes_per_task)
        return images[keep], remap[labels[keep]]

    def describe(self, task: int) -> str:
        return "classes " + ",".join(str(c) for c in self.classes_of(task))

    def label_map(self, task: int) -> list[int] | None:
        return self.classes_of(task)
