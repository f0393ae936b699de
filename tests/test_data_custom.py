"""DatasetTaskSequence: a task stream over the user's own tensors or dataset, and the datamodule check."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from impress_lightning import DatasetTaskSequence, EmbeddedDigits, ImpressLearnModule, TaskSequenceDataModule
from impress_lightning.callbacks import FreezeImpressions, RetentionEvaluator
from impress_lightning.data.digits import load_digits_splits
from impress_lightning.nn import TopK


def _batches(dm, task: int, epoch: int):
    return [tuple(t.clone() for t in batch) for batch in dm.train_loader(task, epoch)]


@pytest.mark.parametrize("family,kwargs", [("rotate", {}), ("permute", {}), ("split", {"classes_per_task": 2})])
def test_own_tensors_give_the_same_stream_as_the_named_dataset(family, kwargs):
    splits = load_digits_splits()
    ours = DatasetTaskSequence((splits.train_images, splits.train_labels), (splits.test_images, splits.test_labels),
                               family=family, num_tasks=3, batch_size=64, seed=3, mean=(0.3054,), std=(0.3760,),
                               **kwargs)
    named = (EmbeddedDigits(num_tasks=3, batch_size=64, seed=3) if family == "rotate" else
             TaskSequenceDataModule(dataset="digits", family=family, num_tasks=3, batch_size=64, seed=3, **kwargs))
    for dm in (ours, named):
        dm.setup("fit")
    assert (ours.num_tasks, ours.num_classes, ours.input_shape) == (named.num_tasks, named.num_classes,
                                                                    named.input_shape)
    assert ours.task_names == named.task_names and ours.label_maps == named.label_maps
    for task, epoch in ((0, 0), (2, 5)):
        for (xa, ya), (xb, yb) in zip(_batches(ours, task, epoch), _batches(named, task, epoch), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        for split in ("val", "test"):
            (xa, ya), (xb, yb) = next(iter(ours.eval_dataloader(task, split))), next(iter(named.eval_dataloader(task, split)))
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


class FloatDigits(Dataset):
    """A map-style dataset of float images [8, 8] (no channel axis) in [0, 1] and int labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images.float() / 255.0, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i, 0], int(self.labels[i])


def test_any_dataset_of_float_images_is_read_exactly_and_normalised_from_its_own_statistics():
    splits = load_digits_splits()
    dm = DatasetTaskSequence(FloatDigits(splits.train_images, splits.train_labels),
                             FloatDigits(splits.test_images, splits.test_labels), num_tasks=2, val_fraction=0.0)
    dm.setup("fit")
    assert torch.equal(dm.source.splits.train_images, splits.train_images)  # 8-bit floats come back exact
    assert dm.hparams.mean == pytest.approx((splits.train_images.float().div(255).mean().item(),))
    assert "train" not in dm.hparams and "test" not in dm.hparams  # data is not a hyper-parameter
    assert dm.num_classes == 10 and dm.input_shape == (1, 8, 8)


def test_bad_user_data_gets_one_line_errors():
    x, y = torch.rand(8, 1, 4, 4), torch.arange(8) % 2
    with pytest.raises(ValueError, match=r"float images must be finite and in \[0, 1\]"):
        DatasetTaskSequence((x * 255, y), (x, y))
    with pytest.raises(ValueError, match="labels are torch.float32: give integer class ids"):
        DatasetTaskSequence((x, y.float()), (x, y))
    with pytest.raises(ValueError, match=r"train images are \(1, 4, 4\) but test images \(1, 5, 5\)"):
        DatasetTaskSequence((x, y), (torch.rand(8, 1, 5, 5), y))
    with pytest.raises(ValueError, match="remove data_dir="):
        DatasetTaskSequence((x, y), (x, y), data_dir="data")
    with pytest.raises(ValueError, match="must be a torch.utils.data.Dataset"):
        DatasetTaskSequence([x, y], (x, y))


class NoEvalData(L.LightningDataModule):
    """A datamodule with train data but none of the stream's other methods."""

    def follow_schedule(self, task_of_epoch) -> None:  # noqa: ANN001
        pass

    def train_dataloader(self):
        return torch.utils.data.DataLoader(TensorDataset(torch.rand(8, 1, 4, 4), torch.arange(8) % 2))


def test_a_datamodule_missing_a_stream_method_stops_fit_with_one_line():
    model = ImpressLearnModule(num_tasks=2, num_classes=2, input_shape=(1, 4, 4), num_impressions=1,
                               mask_rule=TopK(0.5), mask_optimizer=functools.partial(torch.optim.Adam, lr=0.01))
    trainer = L.Trainer(accelerator="cpu", max_epochs=model.schedule.total_epochs, logger=False,
                        reload_dataloaders_every_n_epochs=1, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, callbacks=[FreezeImpressions(), RetentionEvaluator(plots=False)])
    with pytest.raises(ValueError) as error:
        trainer.fit(model, datamodule=NoEvalData())
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("NoEvalData has no eval_dataloader, probe_loader: add eval_dataloader(task, split)")
