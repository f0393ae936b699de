"""Task streams over your own data: tensors, or any ``torch.utils.data`` dataset of ``(image, label)`` pairs.

:class:`DatasetTaskSequence` is a :class:`TaskSequenceDataModule` whose base dataset is what you pass instead of
a named one; the task families (rotate, permute, split), the seeded holdout, shuffling and probe data are the
same code, so the same seed gives the same stream. The data is read once into memory as uint8
``[N, C, H, W]`` images (the form every built-in dataset takes), so:

* uint8 images are kept exactly; float images must lie in [0, 1] and are stored at 8 bits (rounded to the
  nearest 1/255, exact for images that were 8-bit to begin with);
* a dataset item may be a tensor ``[C, H, W]`` or ``[H, W]``, a numpy array or a PIL image;
* labels are integers 0..num_classes-1.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import torch
from torch import Tensor
from torch.utils.data import Dataset

from impress_lightning.data.base import DatasetInfo, Provider, TensorSplits
from impress_lightning.data.datamodule import Family, TaskSequenceDataModule

ImageData = Union[Dataset, tuple[Tensor, Tensor]]


def _as_uint8_images(images: Tensor, where: str) -> Tensor:
    if images.dim() == 3:
        images = images.unsqueeze(1)  # [N, H, W]: one channel
    if images.dim() != 4:
        raise ValueError(f"{where} images must be [N, C, H, W] or [N, H, W], got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.contiguous()
    if not images.is_floating_point():
        raise ValueError(f"{where} images are {images.dtype}: give uint8 images or floats in [0, 1]")
    if not bool(torch.isfinite(images).all()) or float(images.min()) < 0.0 or float(images.max()) > 1.0:
        raise ValueError(f"{where} float images must be finite and in [0, 1] (got {float(images.min()):.3g}.."
                         f"{float(images.max()):.3g}): scale them, e.g. divide 0..255 values by 255")
    return images.mul(255.0).round_().to(torch.uint8).contiguous()


def _item_image(x: Any) -> Tensor:
    if isinstance(x, Tensor):
        return x
    from torchvision.transforms.v2.functional import to_image  # PIL images and numpy arrays: [C, H, W]

    return to_image(x).as_subclass(Tensor)


def read_images(data: ImageData, where: str) -> tuple[Tensor, Tensor]:
    """uint8 images ``[N, C, H, W]`` and int64 labels ``[N]`` of ``data``: a pair of tensors, or a dataset
    whose items are ``(image, label)`` (read once, item by item)."""
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        images, labels = data
    elif isinstance(data, Dataset):
        if len(data) == 0:  # type: ignore[arg-type]
            raise ValueError(f"{where} dataset is empty")
        items = [data[i] for i in range(len(data))]  # type: ignore[arg-type]
        if not all(isinstance(item, (tuple, list)) and len(item) == 2 for item in items[:1]):
            raise ValueError(f"{where} dataset items must be (image, label) pairs, got {type(items[0]).__name__}")
        images = torch.stack([_item_image(x) for x, _ in items])
        labels = torch.as_tensor([int(y) for _, y in items])
    else:
        raise ValueError(f"{where} must be a torch.utils.data.Dataset of (image, label) or a tuple (images, labels), "
                         f"got {type(data).__name__}")
    if labels.dim() != 1 or len(labels) != len(images):
        raise ValueError(f"{where} needs one integer label per image: {len(images)} images, labels of shape "
                         f"{tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"{where} labels are {labels.dtype}: give integer class ids 0..num_classes-1")
    return _as_uint8_images(images, where), labels.to(torch.int64)


def channel_statistics(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 ``images`` scaled to [0, 1] (the normalisation)."""
    scaled = images.to(torch.float64).div(255.0).transpose(0, 1).reshape(images.shape[1], -1)
    std = scaled.std(dim=1).clamp_min(1e-6)  # a constant channel would divide by zero
    return tuple(scaled.mean(dim=1).tolist()), tuple(std.tolist())


class DatasetTaskSequence(TaskSequenceDataModule):
    """A stream of ``num_tasks`` tasks (rotate, permute or class-split) over your own train and test data.

    Args:
        train: the base training data: a ``Dataset`` of ``(image, label)`` or a tuple ``(images, labels)``; a
            seeded ``val_fraction`` of it is held out for validation and probing, as for the built-in datasets.
        test: the base test data, same forms.
        family: "rotate", "permute" or "split" (see :class:`TaskSequenceDataModule`).
        num_tasks: tasks in the stream.
        classes_per_task: classes per task; required for family="split".
        num_classes: classes of the base data; default the largest label + 1.
        mean: per-channel mean of the [0, 1]-scaled images; default measured on ``train``.
        std: per-channel standard deviation; default measured on ``train``.
        **kwargs: other options of TaskSequenceDataModule (batch_size, val_fraction, seed, ...; not
            ``dataset``, ``data_dir`` or ``download``).
    """

    _unsaved_arguments = ("train", "test")

    def __init__(self, train: ImageData, test: ImageData, family: Family = "rotate", num_tasks: int = 5,
                 classes_per_task: int | None = None, num_classes: int | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, **kwargs: Any) -> None:
        for fixed in ("dataset", "data_dir", "download"):
            if fixed in kwargs:
                raise ValueError(f"DatasetTaskSequence takes its data from train/test: remove {fixed}={kwargs[fixed]!r}")
        train_images, train_labels = read_images(train, "train")
        test_images, test_labels = read_images(test, "test")
        if train_images.shape[1:] != test_images.shape[1:]:
            raise ValueError(f"train images are {tuple(train_images.shape[1:])} but test images "
                             f"{tuple(test_images.shape[1:])}: give both splits the same [C, H, W]")
        found = int(max(train_labels.max(), test_labels.max())) + 1
        num_classes = found if num_classes is None else num_classes
        measured = channel_statistics(train_images)
        # Reassigned before the parent saves the hyper-parameters, so the checkpoint records the values used
        # (``export`` reads the normalisation from there).
        mean = tuple(float(m) for m in (mean if mean is not None else measured[0]))
        std = tuple(float(s) for s in (std if std is not None else measured[1]))
        if len(mean) != train_images.shape[1] or len(std) != train_images.shape[1]:
            raise ValueError(f"mean and std need one value per channel ({train_images.shape[1]}), got {len(mean)} "
                             f"and {len(std)}")
        info = DatasetInfo("custom", num_classes=num_classes, input_shape=tuple(train_images.shape[1:]),
                           mean=mean, std=std)
        splits = TensorSplits(train_images, train_labels, test_images, test_labels)
        self._custom = Provider(info, prepare=lambda data_dir, download: None, load=lambda data_dir: splits)
        super().__init__(dataset="custom", family=family, num_tasks=num_tasks, classes_per_task=classes_per_task,
                         **kwargs)

    def _find_provider(self, dataset: str) -> Provider:
        return self._custom

    def state_dict(self) -> dict[str, Any]:
        """The label maps of a class split, saved in checkpoints: ``export`` cannot rebuild this datamodule
        (its data is not in the checkpoint), so it reads them from here."""
        maps = self.label_maps
        return {} if maps is None else {"label_maps": maps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: the label maps follow from the data and the seed."""
