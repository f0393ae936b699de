"""TaskSequenceDataModule: a stream of tasks (permuted, rotated or class-split) over one base dataset.

One ``fit`` runs the whole stream: the trainer reloads the loaders every epoch
(``reload_dataloaders_every_n_epochs=1``) and the epoch's task comes from the model's schedule, handed over
with :meth:`TaskSequenceDataModule.follow_schedule`. Every random choice is derived from (seed, task, epoch),
so a resumed run sees exactly the same batches.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Literal, get_args

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from impress_lightning.data.base import Provider
from impress_lightning.data.families import ClassSplit, PermutedPixels, Rotations, TaskFamily
from impress_lightning.data.imagenet import FolderSource, count_classes
from impress_lightning.data.providers import get_provider
from impress_lightning.data.seeding import PROBE, SHUFFLE, generator
from impress_lightning.data.sources import InMemorySource
from impress_lightning.data.tensors import GroupCollate, NormalizeCollate

Family = Literal["permute", "rotate", "split"]
FAMILIES: tuple[str, ...] = get_args(Family)


class TaskSequenceDataModule(L.LightningDataModule):
    """A sequence of ``num_tasks`` tasks derived from one base dataset.

    Batches are ``(x, y)``: x float32 normalised [B, C, H, W], y int64 in 0..num_classes-1 (task-local labels
    for class splits). Images stay uint8 in memory; a batch is normalised when it is formed. Call
    ``prepare_data()`` then ``setup()`` before asking for loaders outside a Trainer.

    Args:
        dataset: base dataset: "digits" (scikit-learn's 8×8 digits, bundled, no download), "mnist",
            "fashion_mnist", "cifar10", "cifar100" or "imagenet_folder" (ImageFolder trees
            ``<data_dir>/train`` and ``<data_dir>/val``).
        family: how tasks differ: "permute" (a seeded pixel permutation per task), "rotate" (task i rotated by
            i·360/num_tasks degrees) or "split" (disjoint groups of ``classes_per_task`` classes).
        num_tasks: tasks in the stream.
        classes_per_task: classes per task; required for family="split", unused otherwise.
        data_dir: folder holding the datasets (torchvision layout, e.g. ``<data_dir>/MNIST/raw``).
        download: fetch missing data in ``prepare_data`` (needs network).
        batch_size: training batch size.
        eval_batch_size: batch size of validation, test and retention evaluation.
        num_workers: DataLoader worker processes (0 = load in the main process).
        val_fraction: seeded fraction of the base training split held out of every task for validation.
        train_subset: cap on training examples per task (a seeded random subset), for fast runs.
        seed: seed of permutations, class order, holdout, shuffling and augmentation.
        augment: training augmentation (CIFAR: random crop 32 pad 4 + flip; ImageNet: random resized crop +
            flip); None uses the dataset's default (on for CIFAR and ImageNet, none for the digit datasets).
        shuffle_classes: for family="split", draw the class order from ``seed`` (else classes in natural order).
        pin_memory: pin batches in page-locked memory; None pins when CUDA is available.
        eval_cache_mib: memory (MiB) for the validation and test tensors of finished tasks, which retention
            evaluation revisits (rotated / permuted once, then kept, least recently used dropped first); 0 keeps
            none and rebuilds each on every visit. Only the in-memory datasets (not ImageFolder) use it.
        batches_per_step: training batches handed to one Lightning training step, which runs one optimiser
            step on each, in order: the same batches, augmentation and results as 1, with Lightning's fixed
            per-step cost (loop, callback hooks, progress bar, batch transfer) paid once per group. It speeds
            up small networks, whose steps are short (docs/benchmarks.md). Lightning then counts groups:
            the progress bar, ``log_every_n_steps`` and the logged step, ``limit_train_batches`` and an integer
            ``val_check_interval`` are in groups; ``global_step``, ``max_steps`` and the learning-rate schedule
            stay in optimiser steps.
    """

    def __init__(self, dataset: str = "digits", family: Family = "rotate",
                 num_tasks: int = 5, classes_per_task: int | None = None, data_dir: str = "data",
                 download: bool = False, batch_size: int = 128, eval_batch_size: int = 512, num_workers: int = 0,
                 val_fraction: float = 0.1, train_subset: int | None = None, seed: int = 0,
                 augment: bool | None = None, shuffle_classes: bool = True, pin_memory: bool | None = None,
                 eval_cache_mib: int = 1024, batches_per_step: int = 1) -> None:
        super().__init__()
        self.provider = self._find_provider(dataset)
        info = self.provider.info
        if family not in FAMILIES:
            raise ValueError(f"family={family!r} is unknown; choose one of {list(FAMILIES)}")
        _check(num_tasks >= 1, f"num_tasks={num_tasks} must be >= 1")
        if family == "split":
            _check(classes_per_task is not None and classes_per_task >= 1,
                   f"classes_per_task={classes_per_task}: family='split' needs classes_per_task >= 1")
            if info.num_classes is not None:
                _check(num_tasks * classes_per_task <= info.num_classes,
                       f"num_tasks={num_tasks} × classes_per_task={classes_per_task} exceeds the "
                       f"{info.num_classes} classes of dataset={dataset!r}: lower one of them")
        else:
            _check(classes_per_task is None, f"classes_per_task={classes_per_task} is only used with family='split'"
                   "; remove it")
            _check(info.in_memory, f"family={family!r} needs an in-memory dataset; {dataset!r} supports "
                   "family='split' only")
        _check(batch_size >= 1, f"batch_size={batch_size} must be >= 1")
        _check(eval_batch_size >= 1, f"eval_batch_size={eval_batch_size} must be >= 1")
        _check(num_workers >= 0, f"num_workers={num_workers} must be >= 0")
        _check(0.0 <= val_fraction < 1.0, f"val_fraction={val_fraction} must be in [0, 1)")
        _check(train_subset is None or train_subset >= 1, f"train_subset={train_subset} must be >= 1 or null")
        _check(seed >= 0, f"seed={seed} must be >= 0")
        _check(eval_cache_mib >= 0, f"eval_cache_mib={eval_cache_mib} must be >= 0 (0 caches nothing)")
        _check(batches_per_step >= 1, f"batches_per_step={batches_per_step} must be >= 1 (1: one batch per "
               "training step)")
        _check(not (augment and info.in_memory and info.augmentation is None),
               f"augment=true: dataset={dataset!r} has no training augmentation; leave augment unset")
        _check(not (download and not info.in_memory),
               f"download=true is not possible for dataset={dataset!r}: place the ImageFolder trees under "
               f"{Path(data_dir) / 'train'} and {Path(data_dir) / 'val'}")
        self.save_hyperparameters(ignore=list(self._unsaved_arguments))
        self.dataset, self.family_name, self._num_tasks = dataset, family, num_tasks
        self.classes_per_task, self.data_dir, self.download = classes_per_task, Path(data_dir), download
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.val_fraction, self.train_subset, self.seed = val_fraction, train_subset, seed
        self.augment = info.augment_by_default if augment is None else augment
        self.shuffle_classes = shuffle_classes
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.eval_cache_mib, self.batches_per_step = eval_cache_mib, batches_per_step
        self.collate = NormalizeCollate(info.mean, info.std)
        self._family: TaskFamily | None = None
        self._source: InMemorySource | FolderSource | None = None
        self._task_of_epoch: Callable[[int], int] | None = None  # set by follow_schedule

    # Arguments of a subclass's __init__ that are data, not settings (kept out of checkpoints and loggers).
    _unsaved_arguments: tuple[str, ...] = ()

    def _find_provider(self, dataset: str) -> Provider:
        """The base dataset called ``dataset`` (a subclass over the user's own data supplies its own)."""
        return get_provider(dataset)

    # ----- metadata read by LightningCLI links (no data is loaded) -------------------------------------------
    @property
    def num_tasks(self) -> int:
        """Tasks in the stream."""
        return self._num_tasks

    @property
    def num_classes(self) -> int:
        """Outputs per task: the dataset's classes, or ``classes_per_task`` for class splits."""
        if self.classes_per_task is not None:
            return self.classes_per_task
        return self.base_num_classes

    @property
    def base_num_classes(self) -> int:
        """Classes of the base dataset (for ImageFolder trees: the class folders under ``train/``)."""
        known = self.provider.info.num_classes
        return known if known is not None else count_classes(self.data_dir)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one example."""
        return tuple(int(s) for s in self.provider.info.input_shape)  # type: ignore[return-value]

    @property
    def task_family(self) -> TaskFamily:
        """The family that derives task t from the base dataset."""
        if self._family is None:
            if self.family_name == "permute":
                self._family = PermutedPixels(self.seed)
            elif self.family_name == "rotate":
                self._family = Rotations(self._num_tasks)
            else:
                split = ClassSplit(self.base_num_classes, self.num_classes, self.seed, self.shuffle_classes)
                _check(split.num_tasks >= self._num_tasks, f"num_tasks={self._num_tasks} × classes_per_task="
                       f"{self.num_classes} exceeds the {self.base_num_classes} classes found under {self.data_dir}")
                self._family = split
        return self._family

    @property
    def task_names(self) -> list[str]:
        """A short description of every task (e.g. "rotate 72°", "classes 3,8")."""
        return [self.task_family.describe(t) for t in range(self._num_tasks)]

    @property
    def label_maps(self) -> list[list[int]] | None:
        """Per task, the original class id of each output; None when labels are unchanged (permute, rotate)."""
        if self.family_name != "split":
            return None
        return [self.task_family.label_map(t) or [] for t in range(self._num_tasks)]

    # ----- schedule ----------------------------------------------------------------------------------------
    def follow_schedule(self, task_of_epoch: Callable[[int], int]) -> None:
        """Let ``task_of_epoch(epoch) -> task`` decide which task each epoch trains and validates."""
        self._task_of_epoch = task_of_epoch

    def task_of_epoch(self, epoch: int) -> int:
        """The task that ``epoch`` trains (``min(epoch, num_tasks - 1)`` until a schedule is followed)."""
        task = min(epoch, self._num_tasks - 1) if self._task_of_epoch is None else int(self._task_of_epoch(epoch))
        _check(0 <= task < self._num_tasks, f"the schedule maps epoch {epoch} to task {task}, outside "
               f"0..{self._num_tasks - 1}: num_tasks of data and model differ")
        return task

    @property
    def current_epoch(self) -> int:
        """The trainer's current epoch (0 without a trainer)."""
        return self.trainer.current_epoch if self.trainer is not None else 0

    # ----- data --------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Extract archives already present and, with ``download``, fetch missing data (once per machine)."""
        self.provider.prepare(self.data_dir, self.download)

    def setup(self, stage: str | None = None) -> None:
        """Load the base dataset (once; later calls reuse it)."""
        if self._source is not None:
            return
        family = self.task_family
        if self.provider.load is None:
            assert isinstance(family, ClassSplit)
            self._source = FolderSource(self.data_dir, family, self.val_fraction, self.train_subset, self.seed,
                                        image_size=self.input_shape[-1])
            return
        self._source = InMemorySource(self.provider.load(self.data_dir), family, self.base_num_classes,
                                      self.val_fraction, self.train_subset, self.seed,
                                      self.provider.info.augmentation, eval_cache_bytes=self.eval_cache_mib << 20)

    @property
    def source(self) -> InMemorySource | FolderSource:
        """The loaded per-task dataset builder (after :meth:`setup`)."""
        if self._source is None:
            raise RuntimeError("the datamodule is not set up: call prepare_data() and setup() first")
        return self._source

    def _check_task(self, task: int) -> None:
        _check(0 <= task < self._num_tasks, f"task={task} is out of range 0..{self._num_tasks - 1}")

    def _loader(self, dataset: Dataset, batch_size: int, sampler: RandomSampler | None,
                workers_seed: torch.Generator, collate: Callable | None = None) -> DataLoader:
        # ``generator`` seeds the worker processes, so the global RNG is never consumed by data loading.
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                          collate_fn=collate or self.collate, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, generator=workers_seed)

    def train_loader(self, task: int, epoch: int) -> DataLoader:
        """Training loader of ``task`` as seen in ``epoch``: order and augmentation drawn from (seed, task, epoch).

        With ``batches_per_step`` > 1 every item is a list of that many ``(x, y)`` batches (the epoch's last may
        hold fewer): consecutive batches of the same shuffled order, augmented per batch."""
        self._check_task(task)
        group = self.batches_per_step
        # Augmentation is drawn per optimisation batch: the same draws whether or not batches are grouped.
        dataset = self.source.train_dataset(task, epoch, self.augment, self.batch_size)
        sampler = RandomSampler(dataset, generator=generator(self.seed, SHUFFLE, task, epoch))
        collate = GroupCollate(self.collate, self.batch_size) if group > 1 else None
        return self._loader(dataset, self.batch_size * group, sampler, generator(self.seed, SHUFFLE, task, epoch, 1),
                            collate)

    def optimizer_steps(self, loader_batches: int, examples: int) -> int:
        """Optimiser steps in the first ``loader_batches`` items of a training loader over ``examples``
        examples: one per batch of ``batch_size``, ``batches_per_step`` of them to an item."""
        return min(loader_batches * self.batches_per_step, math.ceil(examples / self.batch_size))

    def eval_dataloader(self, task: int, split: Literal["val", "test"] = "test") -> DataLoader:
        """Deterministic loader of ``task``'s "val" or "test" examples (used by the retention evaluator)."""
        self._check_task(task)
        _check(split in ("val", "test"), f"split={split!r} must be 'val' or 'test'")
        _check(split != "val" or self.val_fraction > 0, "split='val' needs val_fraction > 0")
        return self._loader(self.source.eval_dataset(task, split), self.eval_batch_size, None, generator(self.seed))

    def probe_loader(self, task: int) -> DataLoader:
        """Held-out training examples of ``task`` in a fixed order: its validation split when
        ``val_fraction > 0``, else its training split in a seeded order. The model scores its stored
        impressions on the first batches of it (one-hot coefficient start, adaptive bank)."""
        if self.val_fraction > 0:
            return self.eval_dataloader(task, "val")
        self._check_task(task)
        dataset = self.source.train_dataset(task, 0, False)
        sampler = RandomSampler(dataset, generator=generator(self.seed, PROBE, task))
        return self._loader(dataset, self.eval_batch_size, sampler, generator(self.seed, PROBE, task, 1))

    def train_dataloader(self) -> DataLoader:
        """Training loader of the current epoch's task."""
        epoch = self.current_epoch
        return self.train_loader(self.task_of_epoch(epoch), epoch)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Validation loader of the current epoch's task (an empty list when ``val_fraction`` is 0)."""
        if self.val_fraction == 0:
            return []
        return self.eval_dataloader(self.task_of_epoch(self.current_epoch), "val")

    def test_dataloader(self) -> list[DataLoader]:
        """One test loader per task; ``dataloader_idx`` is the task id."""
        return [self.eval_dataloader(t, "test") for t in range(self._num_tasks)]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
