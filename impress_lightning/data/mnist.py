"""MNIST and Fashion-MNIST through torchvision's on-disk layout ``<data_dir>/<MNIST|FashionMNIST>/raw``."""

from __future__ import annotations

import gzip
import shutil
from functools import partial
from pathlib import Path

import torch
from torchvision import datasets

from impress_lightning.data.base import DatasetInfo, Provider, TensorSplits, require_folder

MNIST = DatasetInfo("mnist", num_classes=10, input_shape=(1, 28, 28), mean=(0.1307,), std=(0.3081,))
# Fashion-MNIST's constants: mean and std of its 60 000 training images scaled to [0, 1].
FASHION_MNIST = DatasetInfo("fashion_mnist", num_classes=10, input_shape=(1, 28, 28), mean=(0.2860,),
                            std=(0.3530,))
_PRETTY = {datasets.MNIST: "MNIST", datasets.FashionMNIST: "FashionMNIST"}


def _raw_folder(cls: type[datasets.MNIST], data_dir: Path) -> Path:
    return Path(data_dir) / cls.__name__ / "raw"


def _extract_present_archives(raw: Path) -> None:
    """Decompress ``*.gz`` files whose extracted twin is missing (offline: data copied by hand)."""
    for archive in sorted(raw.glob("*.gz")):
        target = archive.with_suffix("")
        if target.exists():
            continue
        partial_file = target.with_name(target.name + ".part")
        try:
            with gzip.open(archive, "rb") as src, open(partial_file, "wb") as dst:
                shutil.copyfileobj(src, dst)
            partial_file.replace(target)  # atomic: a reader never sees half a file
        except OSError as err:
            raise OSError(f"cannot extract {archive} ({err.strerror or err}): copy {raw.parent} to a writable "
                          "data_dir") from None


def _prepare(cls: type[datasets.MNIST], data_dir: Path, download: bool) -> None:
    """Extract raw .gz files already present; with ``download`` fetch what is still missing (network)."""
    require_folder(data_dir)
    raw = _raw_folder(cls, data_dir)
    if raw.is_dir():
        _extract_present_archives(raw)
    if download:
        try:
            for train in (True, False):
                cls(str(data_dir), train=train, download=True)
        except (RuntimeError, OSError) as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConnectionError(f"{_PRETTY[cls]} download into {raw} failed ({first_line}): copy the raw .gz "
                               "files there instead") from None


def _load(cls: type[datasets.MNIST], data_dir: Path) -> TensorSplits:
    """Both splits as uint8 [N, 1, 28, 28] and int64 labels; a one-line error when the files are missing."""
    try:
        train, test = (cls(str(data_dir), train=flag, download=False) for flag in (True, False))
    except RuntimeError:
        raise FileNotFoundError(f"{_PRETTY[cls]} not found under {_raw_folder(cls, data_dir)}: pass "
                                "download=true (needs network) or copy the raw .gz files there") from None
    return TensorSplits(train.data.unsqueeze(1).contiguous(), train.targets.to(torch.int64),
                        test.data.unsqueeze(1).contiguous(), test.targets.to(torch.int64))


MNIST_PROVIDER = Provider(MNIST, prepare=partial(_prepare, datasets.MNIST), load=partial(_load, datasets.MNIST))
FASHION_MNIST_PROVIDER = Provider(FASHION_MNIST, prepare=partial(_prepare, datasets.FashionMNIST),
                                  load=partial(_load, datasets.FashionMNIST))
