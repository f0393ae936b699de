"""CIFAR-10 and CIFAR-100 from their python pickle batches, the layout torchvision downloads:
``<data_dir>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` and
``<data_dir>/cifar-100-python/{train,test,meta}``.

The batches are read directly instead of through ``torchvision.datasets.CIFAR10``: torchvision insists on the
MD5 sums of the published files, which would reject any subset or re-packed copy in the same format.
torchvision is still what downloads the archive when ``download`` is set. Pickle files can run code when
loaded: only point ``data_dir`` at data you trust.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import datasets

from impress_lightning.data.base import DatasetInfo, Provider, TensorSplits, require_folder
from impress_lightning.data.tensors import CropFlip

_MEAN, _STD = (0.491, 0.482, 0.447), (0.247, 0.243, 0.262)
CIFAR10 = DatasetInfo("cifar10", num_classes=10, input_shape=(3, 32, 32), mean=_MEAN, std=_STD,
                      augmentation=CropFlip(pad=4, flip=True), augment_by_default=True)
CIFAR100 = DatasetInfo("cifar100", num_classes=100, input_shape=(3, 32, 32), mean=_MEAN, std=_STD,
                       augmentation=CropFlip(pad=4, flip=True), augment_by_default=True)


@dataclass(frozen=True)
class _Layout:
    pretty: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    label_key: str
    torchvision_cls: type[datasets.CIFAR10]


_C10 = _Layout("CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
               "labels", datasets.CIFAR10)
_C100 = _Layout("CIFAR-100", "cifar-100-python", ("train",), "test", "fine_labels", datasets.CIFAR100)


def _read_batch(path: Path, label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 3, 32, 32] and int64 labels of one pickle batch (rows are R, G, B planes of 32×32)."""
    with open(path, "rb") as f:
        entry: dict[Any, Any] = pickle.load(f, encoding="latin1")
    entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if "data" not in entry or label_key not in entry:
        raise ValueError(f"{path} is not a CIFAR batch: it needs the keys 'data' and {label_key!r}")
    data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    labels = np.asarray(entry[label_key], dtype=np.int64)
    if len(labels) != len(data):
        raise ValueError(f"{path}: {len(data)} images but {len(labels)} labels")
    return torch.from_numpy(data.copy()), torch.from_numpy(labels)


def _missing_message(layout: _Layout, data_dir: Path) -> str:
    return (f"{layout.pretty} not found under {Path(data_dir) / layout.folder}: pass download=true (needs network) "
            f"or extract the python-version archive into {data_dir}")


def _prepare(layout: _Layout, data_dir: Path, download: bool) -> None:
    """Download and extract the archive when ``download`` is set and the folder is absent."""
    require_folder(data_dir)
    if download and not (Path(data_dir) / layout.folder).is_dir():
        try:
            layout.torchvision_cls(str(data_dir), train=True, download=True)
        except (RuntimeError, OSError) as err:
            raise ConnectionError(f"{layout.pretty} download into {data_dir} failed ({err}): "
                               f"{_missing_message(layout, data_dir)}") from None


def _load(layout: _Layout, data_dir: Path) -> TensorSplits:
    folder = Path(data_dir) / layout.folder
    files = [folder / name for name in (*layout.train_files, layout.test_file)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{_missing_message(layout, data_dir)} (missing {', '.join(missing)})")
    train = [_read_batch(f, layout.label_key) for f in files[:-1]]
    test_images, test_labels = _read_batch(files[-1], layout.label_key)
    return TensorSplits(torch.cat([x for x, _ in train]), torch.cat([y for _, y in train]), test_images,
                        test_labels)


CIFAR10_PROVIDER = Provider(CIFAR10, prepare=partial(_prepare, _C10), load=partial(_load, _C10))
CIFAR100_PROVIDER = Provider(CIFAR100, prepare=partial(_prepare, _C100), load=partial(_load, _C100))
