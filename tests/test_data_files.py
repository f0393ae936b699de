"""Dataset providers reading the real on-disk formats: CIFAR pickle batches, ImageFolder trees, MNIST idx."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from impress_lightning.data import (
    NormalizeCollate,
    SplitCIFAR10,
    SplitCIFAR100,
    SplitImageNet,
    TaskSequenceDataModule,
)
from impress_lightning.data.cifar import CIFAR10


def _all(loader) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def _cifar_rows(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random rows [N, 3072] (R, G, B planes) whose R plane is tinted by the label, G plane constant 7."""
    rows = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    rows[:, :1024] = (labels[:, None] * 20 + rng.integers(0, 10, size=(len(labels), 1024))).astype(np.uint8)
    rows[:, 1024:2048] = 7
    return rows


def _dump(path: Path, entry: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(entry, f)


def write_cifar10(root: Path, per_batch: int = 10, num_test: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """The real cifar-10-batches-py layout with tiny batches; returns the test rows and labels."""
    folder, rng = root / "cifar-10-batches-py", np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(1, 6):
        labels = np.arange(per_batch) % 10
        _dump(folder / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5", "labels": labels.tolist(),
                                           "data": _cifar_rows(labels, rng),
                                           "filenames": [f"img_{i}_{j}.png" for j in range(per_batch)]})
    test_labels = rng.permutation(np.arange(num_test) % 10)
    test_rows = _cifar_rows(test_labels, rng)
    _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": test_labels.tolist(),
                                  "data": test_rows, "filenames": [f"t_{j}.png" for j in range(num_test)]})
    _dump(folder / "batches.meta", {"num_cases_per_batch": per_batch, "num_vis": 3072,
                                    "label_names": [f"class{c}" for c in range(10)]})
    return test_rows, test_labels


def write_cifar100(root: Path, per_class: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The real cifar-100-python layout (train, test, meta) with a few examples per class."""
    folder, rng = root / "cifar-100-python", np.random.default_rng(1)
    folder.mkdir(parents=True)
    for name, n in (("train", 100 * per_class), ("test", 100)):
        fine = rng.permutation(np.arange(n) % 100)
        rows = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        _dump(folder / name, {"filenames": [f"{name}_{j}.png" for j in range(n)], "batch_label": name,
                              "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(), "data": rows})
        if name == "test":
            test_rows, test_labels = rows, fine
    _dump(folder / "meta", {"fine_label_names": [f"fine{c}" for c in range(100)],
                            "coarse_label_names": [f"coarse{c}" for c in range(20)]})
    return test_rows, test_labels


def test_cifar10_split_reads_pickle_batches_in_channel_plane_order(tmp_path: Path) -> None:
    test_rows, test_labels = write_cifar10(tmp_path)
    dm = SplitCIFAR10(data_dir=str(tmp_path), val_fraction=0.0, batch_size=8, seed=2)
    dm.prepare_data()
    dm.setup("fit")
    collate = NormalizeCollate(CIFAR10.mean, CIFAR10.std)
    assert dm.augment and dm.label_maps is not None
    for task, classes in enumerate(dm.label_maps):
        x, y = _all(dm.eval_dataloader(task, "test"))
        keep = np.isin(test_labels, classes)
        expected = torch.from_numpy(test_rows[keep].reshape(-1, 3, 32, 32))
        torch.testing.assert_close(x, collate.normalize(expected))  # file order kept, R/G/B planes in place
        assert torch.equal(torch.tensor(classes)[y], torch.from_numpy(test_labels[keep]))
        assert torch.allclose(x[:, 1], torch.tensor((7 / 255 - CIFAR10.mean[1]) / CIFAR10.std[1]))
        xt, yt = _all(dm.train_loader(task, epoch=0))
        assert xt.shape == (10, 3, 32, 32) and set(yt.tolist()) == {0, 1}  # 5 batches × 1 image per class


def test_cifar_training_augmentation_is_on_by_default_and_seeded(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    kwargs = dict(data_dir=str(tmp_path), val_fraction=0.0, batch_size=100)
    plain = SplitCIFAR10(augment=False, **kwargs)
    augmented = SplitCIFAR10(**kwargs)
    for dm in (plain, augmented):
        dm.setup()
    (xp, yp), (xa, ya) = _all(plain.train_loader(0, 0)), _all(augmented.train_loader(0, 0))
    assert torch.equal(yp, ya) and not torch.equal(xp, xa)
    assert torch.equal(xa, _all(augmented.train_loader(0, 0))[0]), "same (task, epoch) → same augmentation"
    assert not torch.equal(xa, _all(augmented.train_loader(0, 1))[0])
    assert torch.equal(_all(plain.eval_dataloader(0))[0], _all(augmented.eval_dataloader(0))[0])


def test_worker_processes_produce_the_same_augmented_batches(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    in_process = SplitCIFAR10(data_dir=str(tmp_path), batch_size=3)
    workers = SplitCIFAR10(data_dir=str(tmp_path), batch_size=3, num_workers=2)
    for dm in (in_process, workers):
        dm.setup()
    a, b = _all(in_process.train_loader(2, epoch=1)), _all(workers.train_loader(2, epoch=1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_cifar100_split_into_twenty_tasks_of_five(tmp_path: Path) -> None:
    test_rows, test_labels = write_cifar100(tmp_path)
    dm = SplitCIFAR100(data_dir=str(tmp_path), batch_size=16, val_fraction=0.25)
    dm.prepare_data()
    dm.setup()
    assert (dm.num_tasks, dm.num_classes, dm.input_shape) == (20, 5, (3, 32, 32))
    seen: list[int] = []
    for task in (0, 7, 19):
        classes = dm.label_maps[task]  # type: ignore[index]
        x, y = _all(dm.eval_dataloader(task))
        assert x.shape == (5, 3, 32, 32) and sorted(y.tolist()) == [0, 1, 2, 3, 4]
        assert torch.equal(torch.tensor(classes)[y], torch.from_numpy(test_labels[np.isin(test_labels, classes)]))
        n_train, n_val = len(dm.train_loader(task, 0).dataset), len(dm.eval_dataloader(task, "val").dataset)
        assert n_train + n_val == 10
        seen += classes
    assert len(set(seen)) == 15


@pytest.mark.parametrize(("dataset", "message"), [
    ("cifar10", "CIFAR-10 not found under {root}/cifar-10-batches-py: pass download=true"),
    ("cifar100", "CIFAR-100 not found under {root}/cifar-100-python: pass download=true"),
    ("mnist", "MNIST not found under {root}/MNIST/raw: pass download=true (needs network) or copy the raw .gz "
              "files there"),
    ("fashion_mnist", "FashionMNIST not found under {root}/FashionMNIST/raw: pass download=true"),
])
def test_missing_data_gives_a_one_line_error_with_the_path_and_the_fix(tmp_path: Path, dataset: str,
                                                                        message: str) -> None:
    dm = TaskSequenceDataModule(dataset=dataset, family="permute", num_tasks=2, data_dir=str(tmp_path))
    dm.prepare_data()
    with pytest.raises(FileNotFoundError) as err:
        dm.setup()
    assert str(err.value).startswith(message.format(root=tmp_path))
    assert "\n" not in str(err.value)


def write_image_folder(root: Path, classes: list[str], per_class: dict[str, int]) -> None:
    """PNG files ``root/<split>/<class>/<i>.png`` whose red channel encodes the class index."""
    for split, count in per_class.items():
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = np.full((12, 10, 3), 40 * c, dtype=np.uint8)
                pixels[..., 1] = 10 * i
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def test_image_folder_split_with_imagenet_transforms(tmp_path: Path) -> None:
    classes = ["ant", "bee", "cat", "dog", "eel", "fox"]
    write_image_folder(tmp_path, classes, {"train": 4, "val": 2})
    dm = SplitImageNet(data_dir=str(tmp_path), num_tasks=3, classes_per_task=2, val_fraction=0.25, batch_size=3,
                       eval_batch_size=4)
    assert dm.base_num_classes == 6 and dm.augment
    dm.prepare_data()
    dm.setup("fit")
    collate = NormalizeCollate((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    for task, label_map in enumerate(dm.label_maps):  # type: ignore[arg-type]
        x, y = _all(dm.eval_dataloader(task, "test"))
        assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32
        red = collate.mean[0] + collate.std[0] * x[:, 0, 100, 100]  # the class index is painted in red
        assert torch.allclose(red * 255 / 40, torch.tensor(label_map, dtype=torch.float32)[y], atol=0.05)
        n_train, n_val = len(dm.train_loader(task, 0).dataset), len(dm.eval_dataloader(task, "val").dataset)
        assert n_train + n_val == 8
    first = _all(dm.train_loader(1, epoch=0))
    assert torch.equal(first[0], _all(dm.train_loader(1, epoch=0))[0]), "seeded crops: same epoch, same batch"
    assert not torch.equal(first[0], _all(dm.train_loader(1, epoch=1))[0])


def test_missing_image_folder_is_reported_with_its_layout(tmp_path: Path) -> None:
    dm = TaskSequenceDataModule(dataset="imagenet_folder", family="split", num_tasks=2, classes_per_task=2,
                                data_dir=str(tmp_path))
    assert dm.num_classes == 2  # metadata needs no files
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/train and {tmp_path}/val must each hold"):
        dm.setup()


@pytest.mark.real_data
@pytest.mark.parametrize(("dataset", "folder", "download"), [("mnist", "MNIST", True),
                                                              ("fashion_mnist", "FashionMNIST", False)])
def test_real_mnist_files_extract_offline_and_load(shared_data: Path, tmp_path: Path, dataset: str, folder: str,
                                                   download: bool) -> None:
    archives = sorted((shared_data / folder / "raw").glob("*.gz"))
    if len(archives) < 4:
        pytest.skip(f"{shared_data / folder / 'raw'} lacks the four raw .gz files")
    (tmp_path / folder / "raw").mkdir(parents=True)
    for archive in archives:
        shutil.copy(archive, tmp_path / folder / "raw")
    dm = TaskSequenceDataModule(dataset=dataset, family="split", num_tasks=5, classes_per_task=2,
                                data_dir=str(tmp_path), download=download, train_subset=2000, batch_size=500,
                                eval_batch_size=2000)
    dm.prepare_data()  # download=True finds the .gz already there; download=False extracts them itself
    dm.setup()
    total_test = total_val = 0
    for task in range(5):
        x, y = _all(dm.eval_dataloader(task))
        assert x.shape[1:] == (1, 28, 28) and set(y.tolist()) == {0, 1}
        total_test += len(y)
        total_val += len(dm.eval_dataloader(task, "val").dataset)
    assert (total_test, total_val) == (10_000, 6_000)
    train = torch.cat([_all(dm.train_loader(t, 0))[0] for t in range(5)])
    assert train.shape == (10_000, 1, 28, 28)
    # the published normalisation constants make the training images standard-normal overall
    assert abs(train.mean().item()) < 0.03 and abs(train.std().item() - 1) < 0.03
