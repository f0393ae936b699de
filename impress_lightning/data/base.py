"""What every dataset provider describes: static metadata and the in-memory splits it loads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import Tensor

from impress_lightning.data.tensors import CropFlip


@dataclass(frozen=True)
class TensorSplits:
    """A base dataset in memory: uint8 images [N, C, H, W] and int64 labels [N] of the train and test splits."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


@dataclass(frozen=True)
class DatasetInfo:
    """Metadata known without loading any data.

    Attributes:
        name: the ``dataset`` value that selects this provider.
        num_classes: classes of the base dataset (None: counted from an ImageFolder tree).
        input_shape: (C, H, W) of one example as the model sees it.
        mean: per-channel mean of the [0, 1]-scaled images (normalisation).
        std: per-channel standard deviation of the [0, 1]-scaled images.
        augmentation: the standard training augmentation, or None when the dataset has none.
        augment_by_default: whether training augments when ``augment`` is left unset.
        in_memory: loaded into memory as tensors (else read per example from an ImageFolder tree, which
            brings its own training transforms).
    """

    name: str
    num_classes: int | None
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentation: CropFlip | None = None
    augment_by_default: bool = False
    in_memory: bool = True


def require_folder(data_dir: Path) -> None:
    """A one-line error when ``data_dir`` is a file (it would otherwise be reported as missing data)."""
    if Path(data_dir).exists() and not Path(data_dir).is_dir():
        raise NotADirectoryError(f"data_dir={data_dir} is a file, not a folder: pass the folder that holds the "
                                 "datasets (--data.init_args.data_dir <folder>)")


@dataclass(frozen=True)
class Provider:
    """A base dataset: its metadata plus how to fetch it (``prepare``, run once per machine, may write files)
    and how to load it into memory (``load``, read-only, run by every process). ``load`` is None for datasets
    that are not held in memory (ImageFolder trees)."""

    info: DatasetInfo
    prepare: Callable[[Path, bool], None]
    load: Callable[[Path], TensorSplits] | None
