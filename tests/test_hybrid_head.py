"""The hybrid head: a combination task keeps its own last-layer mask only where that wins on validation, and
everything about it (storage, export, checkpoints, forgetting) behaves like any other learned task."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from impress_lightning import HybridHead, ImpressLearnModule, PerLayer, TaskBank
from impress_lightning.bank_model import TaskBankModel
from impress_lightning.nn import packed_size
from impress_lightning.schedule import COMBINATION, PENDING, TaskSchedule
from streams import fit_stream

IDENTITY, SWAPPED = [0, 1, 2, 3], [1, 0, 3, 2]


def clusters(seed: int, labels: list[int], n_train: int = 1024, n_test: int = 512):
    """Four Gaussian clusters in 16-d (the same centres for every task), cluster c labelled ``labels[c]``."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 16, generator=torch.Generator().manual_seed(99)) * 2
    c = torch.randint(0, 4, (n_train + n_test,), generator=gen)
    x = (centres[c] + torch.randn(n_train + n_test, 16, generator=gen)).view(-1, 1, 4, 4)
    y = torch.tensor(labels)[c]
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def train(tmp_path, hybrid: HybridHead | None):
    # two impressions of one labelling; then the classes swapped in pairs (no per-layer combination of the
    # impressions can swap outputs), then the original labelling again (an impression already solves it)
    tasks = [clusters(0, IDENTITY), clusters(1, IDENTITY), clusters(2, SWAPPED), clusters(3, IDENTITY)]
    L.seed_everything(0)
    module = ImpressLearnModule(num_tasks=4, num_classes=4, input_shape=(1, 4, 4), num_impressions=2,
                                combination=PerLayer(), impression_epochs=2, combination_epochs=2, hybrid_head=hybrid,
                                mask_optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    trainer, matrix = fit_stream(module, tasks, tmp_path)
    return module, matrix, trainer, tasks


@pytest.fixture(scope="module")
def hybrid_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("hybrid"), HybridHead(epochs=2))


def test_the_head_is_kept_where_it_wins_and_dropped_where_it_does_not(hybrid_run, tmp_path):
    module, matrix, _, _ = hybrid_run
    swapped, again = module.placement(2)["hybrid_head"], module.placement(3)["hybrid_head"]
    assert swapped["kept"] and swapped["hybrid_validation_accuracy"] > swapped["validation_accuracy"] + 0.2
    assert not again["kept"] and again["hybrid_validation_accuracy"] <= again["validation_accuracy"]
    assert matrix[-1][2] > 0.95
    _, plain_matrix, _, _ = train(tmp_path, None)
    assert plain_matrix[-1][2] < 0.85  # without a head of its own the swapped task stays wrong
    assert matrix[-1][3] == plain_matrix[-1][3]  # a dropped head leaves exactly the plain combination


def test_learned_tasks_never_change_while_heads_are_learned(hybrid_run):
    _, matrix, _, _ = hybrid_run
    for task in range(len(matrix)):
        assert len({row[task] for row in matrix[task:]}) == 1, f"task {task} changed after it was learned"


def test_a_kept_head_is_stored_bit_packed_with_its_task(hybrid_run):
    module, _, _, _ = hybrid_run
    numels = [layer.weight.numel() for layer in module.net.layers]
    plain = module.table.coefficient_count(2) * 4
    assert module.task_storage(2)["stored_bytes"] == plain + packed_size(numels[-1])
    assert module.task_storage(3)["stored_bytes"] == plain
    assert module.task_storage(3)["trainable_parameters"] == module.table.coefficient_count(3) + numels[-1]


def test_an_exported_bank_and_a_checkpoint_reproduce_the_hybrid_task(hybrid_run, tmp_path):
    module, _, trainer, tasks = hybrid_run
    x = tasks[2][2]
    module.eval()
    with torch.no_grad():
        expected = [module(x, t) for t in range(4)]
    bank = TaskBank.from_bytes(TaskBank.from_module(module).to_bytes())
    assert bank.head_tasks == [2] and bank.sizes()["masks"] == bank.masks.nbytes + packed_size(
        module.net.layers[-1].weight.numel())
    rebuilt = TaskBankModel(bank)
    trainer.save_checkpoint(tmp_path / "hybrid.ckpt")
    restored = ImpressLearnModule.load_from_checkpoint(tmp_path / "hybrid.ckpt", weights_only=True).eval()
    with torch.no_grad():
        for t in range(4):
            assert torch.equal(rebuilt(x, t), expected[t]), f"exported task {t}"
            assert torch.equal(restored(x, t), expected[t]), f"checkpointed task {t}"


def test_a_head_stage_follows_every_combination_task():
    schedule = TaskSchedule((0, COMBINATION, PENDING), impression_epochs=3, combination_epochs=2, head_epochs=1)
    kinds = [(s.task, s.kind, s.epochs, s.completes_task) for s in schedule.stages]
    assert kinds == [(0, "impression", 3, True), (1, "combination", 2, False), (1, "head", 1, True),
                     (2, "pending", 3, True)]


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 0}, "HybridHead.epochs=0"),
    ({"validation_batches": 0}, "HybridHead.validation_batches=0"),
    ({"min_gain": 1.5}, "HybridHead.min_gain=1.5"),
])
def test_bad_hybrid_settings_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HybridHead(**kwargs)


def test_a_hybrid_head_needs_combination_tasks():
    with pytest.raises(ValueError, match="impression_source='supsup' has none"):
        ImpressLearnModule(impression_source="supsup", hybrid_head=HybridHead())


def test_a_hybrid_head_needs_a_validation_split(tmp_path):
    from impress_lightning import TaskSequenceDataModule

    dm = TaskSequenceDataModule(dataset="digits", family="rotate", num_tasks=2, val_fraction=0.0)
    module = ImpressLearnModule(num_tasks=2, num_classes=dm.num_classes, input_shape=dm.input_shape,
                                num_impressions=1, hybrid_head=HybridHead())
    trainer = L.Trainer(max_epochs=module.schedule.total_epochs, reload_dataloaders_every_n_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="set data.val_fraction > 0"):
        trainer.fit(module, datamodule=dm)


def test_the_non_finite_guard_watches_the_head_scores_during_a_head_stage():
    from impress_lightning.callbacks.numerics import NonFiniteGuard

    module = ImpressLearnModule(num_tasks=2, num_impressions=1, hybrid_head=HybridHead())
    head_stage = module.schedule.stages[-1]
    assert head_stage.kind == "head"
    assert NonFiniteGuard.learned_values(module, head_stage) == [module.net.layers[-1].scores]


@pytest.mark.parametrize("hybrid_heads", [False, True])
def test_a_checkpoint_written_before_hybrid_heads_existed_still_loads(hybrid_heads):
    from impress_lightning.tasks import TaskTable

    shapes = [(8, 4), (3, 8)]
    old = TaskTable([0, -1, -1], 1, PerLayer(), shapes).state_dict()
    for name in ("head_masks", "head_kept", "head_validation"):
        del old[name]  # what a checkpoint of the code before hybrid heads holds
    old["coefficients.1"] = torch.full_like(old["coefficients.1"], 0.5)
    table = TaskTable([0, -1, -1], 1, PerLayer(), shapes, hybrid_heads=hybrid_heads)
    table.load_state_dict(old)  # strict: every other key must still match
    assert not table.head_kept.any() and (table.head_validation == -1).all()
    assert table.head_masks.shape[0] == (3 if hybrid_heads else 0)
    assert torch.equal(table.coefficients[1].detach(), old["coefficients.1"])
    with pytest.raises(RuntimeError, match="slots"):
        del old["slots"]
        TaskTable([0, -1, -1], 1, PerLayer(), shapes).load_state_dict(old)
