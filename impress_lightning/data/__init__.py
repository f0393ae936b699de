"""Task streams for continual learning: task families, dataset providers and the Lightning DataModule.

``data`` knows nothing about models. A stream is a base dataset (digits, MNIST, Fashion-MNIST, CIFAR-10/100,
an ImageFolder tree) plus a family (permute, rotate, class split) that derives task t from it.
"""

from impress_lightning.data.base import DatasetInfo, Provider, TensorSplits
from impress_lightning.data.benchmarks import (
    EmbeddedDigits,
    PermutedMNIST,
    RotatedMNIST,
    SplitCIFAR10,
    SplitCIFAR100,
    SplitFashionMNIST,
    SplitImageNet,
    SplitMNIST,
)
from impress_lightning.data.custom import DatasetTaskSequence
from impress_lightning.data.datamodule import FAMILIES, TaskSequenceDataModule
from impress_lightning.data.families import ClassSplit, PermutedPixels, Rotations, TaskFamily
from impress_lightning.data.providers import PROVIDERS, get_provider
from impress_lightning.data.tensors import CropFlip, GroupCollate, ImageBatch, NormalizeCollate, TaskTensors

__all__ = [
    "FAMILIES", "PROVIDERS", "ClassSplit", "CropFlip", "DatasetInfo", "DatasetTaskSequence", "EmbeddedDigits",
    "GroupCollate", "ImageBatch", "NormalizeCollate", "PermutedMNIST", "PermutedPixels", "Provider", "RotatedMNIST",
    "Rotations", "SplitCIFAR10", "SplitCIFAR100", "SplitFashionMNIST", "SplitImageNet", "SplitMNIST", "TaskFamily",
    "TaskSequenceDataModule", "TaskTensors", "TensorSplits", "get_provider",
]
