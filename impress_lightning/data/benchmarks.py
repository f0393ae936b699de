"""Named benchmarks: TaskSequenceDataModule with the dataset, family and task counts of the literature.

Configs select them with ``class_path: impress_lightning.data.RotatedMNIST``. Each takes every option of
:class:`TaskSequenceDataModule` except those it fixes (LightningCLI follows ``**kwargs`` to the parent).
"""

from __future__ import annotations

from typing import Any

from impress_lightning.data.datamodule import TaskSequenceDataModule


class EmbeddedDigits(TaskSequenceDataModule):
    """Rotated 8×8 digits from scikit-learn: runs offline in seconds (the quickstart).

    Args:
        num_tasks: rotation tasks (angle step 360/num_tasks degrees).
        **kwargs: other options of TaskSequenceDataModule.
    """

    def __init__(self, num_tasks: int = 5, **kwargs: Any) -> None:
        super().__init__(dataset="digits", family="rotate", num_tasks=num_tasks, **kwargs)


class PermutedMNIST(TaskSequenceDataModule):
    """PermutedMNIST: every task a seeded permutation of the 784 pixels, 10 shared classes (SupSup ran 250).

    Args:
        num_tasks: permutation tasks.
        **kwargs: other options of TaskSequenceDataModule.
    """

    def __init__(self, num_tasks: int = 250, **kwargs: Any) -> None:
        super().__init__(dataset="mnist", family="permute", num_tasks=num_tasks, **kwargs)


class RotatedMNIST(TaskSequenceDataModule):
    """RotatedMNIST: task i rotates every digit by i·360/num_tasks degrees (36 tasks → 10° steps).

    Args:
        num_tasks: rotation tasks.
        **kwargs: other options of TaskSequenceDataModule.
    """

    def __init__(self, num_tasks: int = 36, **kwargs: Any) -> None:
        super().__init__(dataset="mnist", family="rotate", num_tasks=num_tasks, **kwargs)


class SplitMNIST(TaskSequenceDataModule):
    """SplitMNIST: 5 tasks of 2 digit classes, labels remapped to 0/1.

    Args:
        num_tasks: class-split tasks.
        classes_per_task: classes per task.
        **kwargs: other options of TaskSequenceDataModule.
    """

    def __init__(self, num_tasks: int = 5, classes_per_task: int = 2, **kwargs: Any) -> None:
        super().__init__(dataset="mnist", family="split", num_tasks=num_tasks, classes_per_task=classes_per_task,
                         **kwargs)


class SplitFashionMNIST(TaskSequenceDataModule):
    """SplitFashionMNIST: 5 tasks of 2 clothing classes, labels remapped to 0/1.

    Args:
        num_tasks: class-split tasks.
        classes_per_task: classes per task.
        **kwargs: other options of TaskSequenceDataModule.
    """

    def __init__(self, num_tasks: int = 5, classes_per_task: int = 2, **kwargs: Any) -> None:
        super().__init__(dataset="fashion_mnist", family="split", num_tasks=num_tasks,
                         classes_per_task=classes_per_task, **kwargs)


class SplitCIFAR10(TaskSequenceDataModule):
    """SplitCIFAR10: 5 tasks of 2 classes, crop + flip augmentation by default.

    Args:
        num_tasks: class-split tasks.
        classes_per_task: classes per task.
        **kwargs: other options of TaskSequenceDataModule.
    """

    def __init__(self, num_tasks: int = 5, classes_per_task: int = 2, **kwargs: Any) -> None:
        super().__init__(dataset="cifar10", family="split", num_tasks=num_tasks, classes_per_task=classes_per_task,
                         **kwargs)


class SplitCIFAR100(TaskSequenceDataModule):
    """SplitCIFAR100: 20 tasks of 5 classes in a seeded class order, crop + flip augmentation by default.

    Args:
        num_tasks: class-split tasks.
        classes_per_task: classes per task.
        **kwargs: other options of TaskSequenceDataModule.
    """

    def __init__(self, num_tasks: int = 20, classes_per_task: int = 5, **kwargs: Any) -> None:
        super().__init__(dataset="cifar100", family="split", num_tasks=num_tasks, classes_per_task=classes_per_task,
                         **kwargs)


class SplitImageNet(TaskSequenceDataModule):
    """SplitImageNet: 100 tasks of 10 classes from ImageFolder trees ``<data_dir>/train`` and ``<data_dir>/val``
    (read from disk, standard ImageNet transforms).

    Args:
        num_tasks: class-split tasks.
        classes_per_task: classes per task.
        data_dir: folder holding ``train/`` and ``val/``.
        **kwargs: other options of TaskSequenceDataModule.
    """

    def __init__(self, num_tasks: int = 100, classes_per_task: int = 10, data_dir: str = "data/imagenet",
                 **kwargs: Any) -> None:
        super().__init__(dataset="imagenet_folder", family="split", num_tasks=num_tasks,
                         classes_per_task=classes_per_task, data_dir=data_dir, **kwargs)
