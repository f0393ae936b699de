"""scikit-learn's bundled 8×8 digits: the embedded default dataset that needs no download."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from impress_lightning.data.base import DatasetInfo, Provider, TensorSplits

# Mean and std of the 1437 training images scaled to [0, 1] (computed once from the split below).
DIGITS = DatasetInfo("digits", num_classes=10, input_shape=(1, 8, 8), mean=(0.3054,), std=(0.3760,))
_SPLIT_SEED = 0  # fixed, like a published benchmark split: the run seed must not move examples into test
_TEST_FRACTION = 0.2


def _prepare(data_dir: Path, download: bool) -> None:
    """Nothing to fetch: the data ships with scikit-learn."""


def load_digits_splits(data_dir: Path | None = None) -> TensorSplits:
    """The 1797 digits as uint8 images [N, 1, 8, 8] (0..16 scaled to 0..255), split 1437/360 stratified with
    a fixed seed. ``data_dir`` is unused."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    train, test = train_test_split(np.arange(len(labels)), test_size=_TEST_FRACTION, random_state=_SPLIT_SEED,
                                   stratify=labels)
    as_tensor = torch.from_numpy
    return TensorSplits(as_tensor(images[train]), as_tensor(labels[train]),
                        as_tensor(images[test]), as_tensor(labels[test]))


DIGITS_PROVIDER = Provider(DIGITS, prepare=_prepare, load=load_digits_splits)
