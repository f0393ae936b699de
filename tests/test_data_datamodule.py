"""TaskSequenceDataModule on the embedded digits: metadata, loaders per task, schedule, reproducible order."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from impress_lightning.data import EmbeddedDigits, NormalizeCollate, Rotations, TaskSequenceDataModule
from impress_lightning.data.digits import DIGITS, load_digits_splits


@pytest.fixture(scope="module")
def digits() -> EmbeddedDigits:
    dm = EmbeddedDigits(num_tasks=4, batch_size=64, eval_batch_size=100)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _all(loader) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_metadata_is_known_before_any_data_is_loaded() -> None:
    dm = TaskSequenceDataModule(dataset="cifar100", family="split", num_tasks=20, classes_per_task=5,
                                data_dir="/nonexistent")
    assert (dm.num_tasks, dm.num_classes, dm.input_shape) == (20, 5, (3, 32, 32))
    assert all(isinstance(s, int) for s in dm.input_shape)
    assert len(dm.task_names) == 20 and dm.task_names[0].startswith("classes ")
    assert dm.label_maps is not None and sorted(c for m in dm.label_maps for c in m) == list(range(100))
    rotated = TaskSequenceDataModule(dataset="mnist", family="rotate", num_tasks=36, data_dir="/nonexistent")
    assert (rotated.num_classes, rotated.input_shape, rotated.label_maps) == (10, (1, 28, 28), None)
    assert rotated.task_names[1] == "rotate 10°"
    with pytest.raises(RuntimeError, match="call prepare_data\\(\\) and setup\\(\\) first"):
        rotated.train_loader(0, 0)


def test_digits_splits_are_fixed_and_scaled_to_uint8() -> None:
    splits = load_digits_splits()
    assert (len(splits.train_labels), len(splits.test_labels)) == (1437, 360)
    assert splits.train_images.dtype == torch.uint8 and splits.train_images.shape[1:] == (1, 8, 8)
    assert int(splits.train_images.max()) == 255
    assert torch.equal(splits.test_labels, load_digits_splits().test_labels)
    assert set(splits.test_labels.tolist()) == set(range(10))
    # the documented normalisation constants are those of the training images
    scaled = splits.train_images.float() / 255
    assert abs(scaled.mean().item() - DIGITS.mean[0]) < 1e-3 and abs(scaled.std().item() - DIGITS.std[0]) < 1e-3


def test_every_task_has_train_val_and_test_batches_of_the_right_form(digits: EmbeddedDigits) -> None:
    for task in range(4):
        x, y = next(iter(digits.train_loader(task, epoch=0)))
        assert x.shape == (64, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
        n_train = len(digits.train_loader(task, 0).dataset)
        n_val = len(digits.eval_dataloader(task, "val").dataset)
        assert (n_train + n_val, n_val) == (1437, 144)
        xt, yt = _all(digits.eval_dataloader(task, "test"))
        assert xt.shape == (360, 1, 8, 8) and int(yt.min()) == 0 and int(yt.max()) == 9
    loaders = digits.test_dataloader()
    assert len(loaders) == 4 and all(len(loader.dataset) == 360 for loader in loaders)


def test_task_images_are_the_family_applied_to_the_base_images(digits: EmbeddedDigits) -> None:
    base = load_digits_splits()
    collate = NormalizeCollate(DIGITS.mean, DIGITS.std)
    for task in (0, 1, 3):
        x, y = _all(digits.eval_dataloader(task, "test"))
        rotated = Rotations(4).apply(base.test_images, base.test_labels, task)[0]
        torch.testing.assert_close(x, collate.normalize(rotated))
        assert torch.equal(y, base.test_labels)


def test_shuffle_is_reproducible_per_epoch_and_differs_across_epochs(digits: EmbeddedDigits) -> None:
    first = _all(digits.train_loader(1, epoch=3))
    again = _all(digits.train_loader(1, epoch=3))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    later = _all(digits.train_loader(1, epoch=4))
    assert not torch.equal(first[1], later[1])
    assert sorted(first[1].tolist()) == sorted(later[1].tolist()), "an epoch visits every example once"
    eval_a, eval_b = _all(digits.eval_dataloader(2)), _all(digits.eval_dataloader(2))
    assert torch.equal(eval_a[0], eval_b[0])


def test_data_loading_leaves_the_global_rng_alone(digits: EmbeddedDigits) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _all(digits.train_loader(0, epoch=0))
    assert torch.equal(torch.rand(3), expected)


def test_default_schedule_and_follow_schedule() -> None:
    dm = EmbeddedDigits(num_tasks=4, batch_size=2000, eval_batch_size=2000)
    dm.setup()
    assert [dm.task_of_epoch(e) for e in range(6)] == [0, 1, 2, 3, 3, 3]
    dm.follow_schedule(lambda epoch: epoch // 2)
    assert [dm.task_of_epoch(e) for e in range(6)] == [0, 0, 1, 1, 2, 2]
    dm.trainer = SimpleNamespace(current_epoch=5)  # type: ignore[assignment]
    x, _ = next(iter(dm.train_dataloader()))
    expected, _ = next(iter(dm.train_loader(2, epoch=5)))
    assert torch.equal(x, expected)
    val_x, _ = next(iter(dm.val_dataloader()))
    assert torch.equal(val_x, next(iter(dm.eval_dataloader(2, "val")))[0])
    dm.trainer = SimpleNamespace(current_epoch=9)  # type: ignore[assignment]
    with pytest.raises(ValueError, match="maps epoch 9 to task 4, outside 0..3"):
        dm.train_dataloader()


def test_class_split_on_digits_remaps_labels_and_keeps_only_its_classes() -> None:
    dm = TaskSequenceDataModule(dataset="digits", family="split", num_tasks=5, classes_per_task=2, seed=3)
    dm.setup()
    base = load_digits_splits()
    assert dm.label_maps is not None and dm.num_classes == 2
    for task, classes in enumerate(dm.label_maps):
        _, y = _all(dm.eval_dataloader(task))
        assert set(y.tolist()) == {0, 1}
        assert len(y) == int(torch.isin(base.test_labels, torch.tensor(classes)).sum())
        expected = base.test_labels[torch.isin(base.test_labels, torch.tensor(classes))]
        assert torch.equal(torch.tensor(classes)[y], expected)


def test_train_subset_caps_training_examples_only() -> None:
    dm = EmbeddedDigits(num_tasks=2, train_subset=100)
    dm.setup()
    assert len(dm.train_loader(1, 0).dataset) == 100
    assert len(dm.eval_dataloader(1, "val").dataset) == 144
    assert len(dm.eval_dataloader(1, "test").dataset) == 360


def test_no_validation_split_gives_no_val_loader() -> None:
    dm = EmbeddedDigits(num_tasks=2, val_fraction=0.0)
    dm.setup()
    assert dm.val_dataloader() == []
    assert len(dm.train_loader(0, 0).dataset) == 1437
    with pytest.raises(ValueError, match="split='val' needs val_fraction > 0"):
        dm.eval_dataloader(0, "val")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"dataset": "svhn"}, "dataset='svhn' is unknown"),
    ({"family": "shuffle"}, "family='shuffle' is unknown"),
    ({"num_tasks": 0}, "num_tasks=0 must be >= 1"),
    ({"family": "split"}, "classes_per_task=None: family='split' needs"),
    ({"family": "split", "num_tasks": 6, "classes_per_task": 2}, "num_tasks=6 × classes_per_task=2 exceeds"),
    ({"classes_per_task": 2}, "classes_per_task=2 is only used with family='split'"),
    ({"batch_size": 0}, "batch_size=0 must be >= 1"),
    ({"eval_batch_size": 0}, "eval_batch_size=0"),
    ({"num_workers": -1}, "num_workers=-1"),
    ({"val_fraction": 1.0}, "val_fraction=1.0 must be in"),
    ({"train_subset": 0}, "train_subset=0"),
    ({"augment": True}, "augment=true: dataset='digits' has no training augmentation"),
    ({"dataset": "imagenet_folder", "family": "rotate"}, "family='rotate' needs an in-memory dataset"),
    ({"dataset": "imagenet_folder", "family": "split", "classes_per_task": 2, "download": True},
     "download=true is not possible"),
])
def test_bad_arguments_give_one_line_errors_naming_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        TaskSequenceDataModule(**kwargs)
    assert "\n" not in str(err.value)


def test_out_of_range_tasks_are_rejected(digits: EmbeddedDigits) -> None:
    with pytest.raises(ValueError, match="task=4 is out of range 0..3"):
        digits.eval_dataloader(4)
    with pytest.raises(ValueError, match="split='train' must be 'val' or 'test'"):
        digits.eval_dataloader(0, "train")  # type: ignore[arg-type]
