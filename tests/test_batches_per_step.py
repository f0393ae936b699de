"""``batches_per_step``: a training step that runs several optimisation batches gives the same run as one batch
per step: the same batches, augmentation, learning-rate schedule, learned values and accuracies."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from impress_lightning import ImpressLearnModule, PerLayer
from impress_lightning.callbacks import NonFiniteError, NonFiniteGuard, RetentionEvaluator
from impress_lightning.data import CropFlip, EmbeddedDigits, GroupCollate, NormalizeCollate, TaskTensors

BATCH = 16
EXAMPLES = 150  # 10 batches of 16, the last of 6: groups of 3 leave a last group of one batch


def test_augmentation_drawn_per_block_equals_fetching_each_batch_alone() -> None:
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(64)
    alone = TaskTensors(images, labels, augment=CropFlip(pad=2), seed=5)
    grouped = TaskTensors(images, labels, augment=CropFlip(pad=2), seed=5, augment_block=BATCH)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(1)).tolist()[:40]  # 16 + 16 + 8
    expected = torch.cat([alone.__getitems__(order[i:i + BATCH]).images for i in range(0, 40, BATCH)])
    assert torch.equal(grouped.__getitems__(order).images, expected)
    assert not torch.equal(alone.__getitems__(order).images, expected)  # one draw for the whole fetch differs
    with pytest.raises(ValueError, match="augment_block=0 must be >= 1"):
        TaskTensors(images, labels, augment_block=0)


def test_a_group_collates_into_the_batches_in_order() -> None:
    images = torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8)
    labels = torch.randint(0, 10, (40,))
    normalize = NormalizeCollate([0.5], [0.25])
    pairs = GroupCollate(normalize, BATCH)(list(zip(images, labels)))
    assert [len(y) for _, y in pairs] == [16, 16, 8]
    for i, (x, y) in enumerate(pairs):
        assert torch.equal(x, normalize.normalize(images[i * BATCH:(i + 1) * BATCH]))
        assert torch.equal(y, labels[i * BATCH:(i + 1) * BATCH])


def test_the_grouped_loader_yields_the_same_batches() -> None:
    def batches(group: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
        dm = EmbeddedDigits(num_tasks=2, batch_size=BATCH, train_subset=EXAMPLES, batches_per_step=group)
        dm.setup("fit")
        items = list(dm.train_loader(1, 3))
        return [pair for item in items for pair in (item if group > 1 else [item])], len(items)

    single, n_single = batches(1)
    grouped, n_grouped = batches(3)
    assert (n_single, n_grouped) == (10, 4)
    assert len(grouped) == len(single)
    for (x, y), (gx, gy) in zip(single, grouped):
        assert torch.equal(x, gx) and torch.equal(y, gy)


def test_batches_per_step_below_one_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match=r"^batches_per_step=0 must be >= 1 \(1: one batch per training step\)$"):
        EmbeddedDigits(batches_per_step=0)


def fit(root: Path, group: int) -> tuple[ImpressLearnModule, L.Trainer]:
    L.seed_everything(0)
    dm = EmbeddedDigits(num_tasks=2, batch_size=BATCH, train_subset=EXAMPLES, batches_per_step=group)
    module = ImpressLearnModule(num_tasks=2, num_classes=dm.num_classes, input_shape=dm.input_shape,
                                num_impressions=1, combination=PerLayer(), impression_epochs=2,
                                combination_epochs=2, cosine_schedule=True)
    trainer = L.Trainer(max_epochs=module.schedule.total_epochs, reload_dataloaders_every_n_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", deterministic=True, default_root_dir=root)
    trainer.fit(module, datamodule=dm)
    return module, trainer


def test_a_grouped_fit_learns_exactly_what_the_ungrouped_fit_learns(tmp_path: Path) -> None:
    (single, single_trainer), (grouped, grouped_trainer) = fit(tmp_path / "one", 1), fit(tmp_path / "three", 3)
    assert single_trainer.global_step == grouped_trainer.global_step == 4 * 10  # optimiser steps
    assert single_trainer.num_training_batches == 10 and grouped_trainer.num_training_batches == 4
    reference = single.state_dict()
    for name, value in grouped.state_dict().items():
        assert torch.equal(value, reference[name]), name
    matrices = [next(c for c in t.callbacks if isinstance(c, RetentionEvaluator)).matrix
                for t in (single_trainer, grouped_trainer)]
    assert matrices[0] == matrices[1] and len(matrices[0]) == 2


def test_the_guard_names_the_step_of_the_first_non_finite_loss_of_a_group() -> None:
    stage = SimpleNamespace(kind="combination", task=1, index=1)
    module = SimpleNamespace(current_stage=stage, table=SimpleNamespace(coefficients=[torch.zeros(1), torch.ones(1)]))
    trainer = SimpleNamespace(world_size=1, current_epoch=3, global_step=12)  # after steps 10, 11 and 12
    losses = torch.tensor([0.5, float("nan"), float("nan")])
    with pytest.raises(NonFiniteError, match=r"non-finite training loss nan at task 1, .* batch 4, step 11;"):
        NonFiniteGuard().on_train_batch_end(trainer, module, {"loss": losses}, None, 4)
