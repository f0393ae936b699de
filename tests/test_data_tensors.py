"""Per-batch tensors: augmentation, the uint8 task dataset, normalising collate and the tensor cache."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from impress_lightning.data import CropFlip, ImageBatch, NormalizeCollate, TaskTensors
from impress_lightning.data.sources import TensorLRU


def _images(n: int, c: int = 3, h: int = 8, w: int = 8) -> torch.Tensor:
    # strictly positive, so padding zeros are recognisable
    return torch.randint(1, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_crop_flip_is_a_shifted_window_of_the_padded_image() -> None:
    images = _images(64)
    out = CropFlip(pad=2, flip=True)(images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    shifts, flips = set(), 0
    for i in range(64):
        windows = {(dy, dx, f): padded[i, :, dy:dy + 8, dx:dx + 8].flip(-1) if f else padded[i, :, dy:dy + 8, dx:dx + 8]
                   for dy in range(5) for dx in range(5) for f in (False, True)}
        matches = [key for key, win in windows.items() if torch.equal(win, out[i])]
        assert matches, f"example {i} is not a crop (or flipped crop) of its padded image"
        shifts.add(matches[0][:2])
        flips += matches[0][2]
    assert len(shifts) > 5, "offsets must vary across the batch"
    assert 0 < flips < 64, "about half the examples must be flipped"


def test_crop_flip_depends_only_on_the_generator_seed() -> None:
    images = _images(16)
    aug = CropFlip()
    a = aug(images, torch.Generator().manual_seed(5))
    assert torch.equal(a, aug(images, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, aug(images, torch.Generator().manual_seed(6)))


def test_task_tensors_fetch_whole_batches_and_single_examples() -> None:
    images, labels = _images(10), torch.arange(10)
    data = TaskTensors(images, labels)
    batch = data.__getitems__([3, 1, 7])
    assert isinstance(batch, ImageBatch)
    assert torch.equal(batch.images, images[[3, 1, 7]]) and batch.labels.tolist() == [3, 1, 7]
    x, y = data[4]
    assert torch.equal(x, images[4]) and int(y) == 4


def test_augmented_batches_are_reproducible_per_seed_and_first_index() -> None:
    data = TaskTensors(_images(32), torch.arange(32), augment=CropFlip(), seed=11)
    first = data.__getitems__(list(range(16)))
    assert torch.equal(first.images, data.__getitems__(list(range(16))).images)
    other_seed = TaskTensors(data.images, data.labels, augment=CropFlip(), seed=12).__getitems__(list(range(16)))
    assert not torch.equal(first.images, other_seed.images)


def test_task_tensors_reject_float_images_and_mismatched_labels() -> None:
    with pytest.raises(ValueError, match="images must be uint8"):
        TaskTensors(torch.zeros(2, 1, 3, 3), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels must have shape"):
        TaskTensors(torch.zeros(2, 1, 3, 3, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))


def test_collate_normalises_per_channel_from_batches_and_from_samples() -> None:
    images, labels = _images(6), torch.arange(6)
    collate = NormalizeCollate(mean=(0.1, 0.5, 0.9), std=(0.5, 0.25, 0.2))
    x, y = collate(ImageBatch(images, labels))
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    expected = (images[:, 1].float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(x[:, 1], expected)
    x2, y2 = collate([(images[i], int(labels[i])) for i in range(6)])  # the per-example path (ImageFolder)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    with pytest.raises(ValueError, match="one value per channel"):
        NormalizeCollate((0.1, 0.2), (0.3,))


def test_a_subset_of_task_tensors_still_loads_whole_batches() -> None:
    # the retention evaluator shards eval loaders with Subset: batches must stay identical to the loader's
    images, labels = _images(9), torch.arange(9)
    collate = NormalizeCollate((0.5,) * 3, (0.5,) * 3)
    subset = Subset(TaskTensors(images, labels), range(1, 9, 2))
    (x, y), = list(DataLoader(subset, batch_size=8, collate_fn=collate))
    assert y.tolist() == [1, 3, 5, 7]
    torch.testing.assert_close(x, collate(ImageBatch(images[[1, 3, 5, 7]], labels[[1, 3, 5, 7]]))[0])


def test_lru_evicts_least_recently_used_by_count_and_bytes() -> None:
    pair = lambda n: (torch.zeros(n, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))  # noqa: E731
    builds: list[str] = []

    def build(key: str, n: int):  # type: ignore[no-untyped-def]
        return lambda: builds.append(key) or pair(n)

    cache = TensorLRU(max_items=2)
    cache.get("a", build("a", 1)), cache.get("b", build("b", 1)), cache.get("a", build("a", 1))
    cache.get("c", build("c", 1))  # evicts b, the least recently used
    cache.get("a", build("a", 1)), cache.get("b", build("b", 1))
    assert builds == ["a", "b", "c", "b"]
    by_bytes = TensorLRU(max_bytes=10)
    by_bytes.get("x", build("x", 6)), by_bytes.get("y", build("y", 6))
    assert len(by_bytes) == 1
