"""Zero forgetting, bit-exact, and optimiser isolation: nothing a finished task uses is ever written again."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from impress_lightning.callbacks import FreezeImpressions, RetentionEvaluator
from impress_lightning.data import TaskSequenceDataModule
from impress_lightning.module import ImpressLearnModule
from impress_lightning.nn import Global, PerLayer, PerNeuron, TopK
from impress_lightning.hybrid import HybridHead
from impress_lightning.placement import AdaptiveBank


def digits_stream(num_tasks: int) -> TaskSequenceDataModule:
    return TaskSequenceDataModule(dataset="digits", family="rotate", num_tasks=num_tasks, batch_size=64,
                                  train_subset=256, seed=0)


def fit(module: ImpressLearnModule, dm: TaskSequenceDataModule, tmp_path, extra=()) -> L.Trainer:
    trainer = L.Trainer(max_epochs=module.schedule.total_epochs, reload_dataloaders_every_n_epochs=1,
                        callbacks=[FreezeImpressions(verbose=False), RetentionEvaluator(output_dir=str(tmp_path),
                                                                                        plots=False), *extra],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, deterministic=True, default_root_dir=tmp_path)
    trainer.fit(module, dm)
    return trainer


class LogitsProbe(L.Callback):
    """Records each finished task's logits on a fixed input right after the task, and at the very end."""

    def __init__(self, probe: torch.Tensor) -> None:
        self.probe, self.after_task, self.at_end = probe, {}, {}

    def on_train_epoch_end(self, trainer, module) -> None:
        stage = module.current_stage
        if trainer.current_epoch == stage.last_epoch and stage.completes_task:
            module.eval()
            with torch.no_grad():
                self.after_task[stage.task] = module(self.probe, stage.task).clone()
            module.train()

    def on_fit_end(self, trainer, module) -> None:
        module.eval()
        with torch.no_grad():
            self.at_end = {t: module(self.probe, t).clone() for t in self.after_task}


RULES = {  # every combination rule and start, and the adaptive bank
    "per_layer": {"combination": PerLayer()},
    "global_uniform": {"combination": Global(), "alpha_start": "uniform"},
    "per_neuron_fp16": {"combination": PerNeuron(precision="float16")},
    "adaptive": {"adaptive_bank": AdaptiveBank(target=0.9, max_impressions=3)},
    "hybrid_head": {"hybrid_head": HybridHead()},
}


@pytest.mark.parametrize("backbone, source, rule", [
    ("lenet_300_100", "heterogeneous", "per_layer"), ("gem_resnet18", "heterogeneous", "per_neuron_fp16"),
    ("lenet_300_100", "supsup", "per_layer"), ("lenet_300_100", "heterogeneous", "global_uniform"),
    ("lenet_300_100", "heterogeneous", "per_neuron_fp16"), ("gem_resnet18", "heterogeneous", "adaptive"),
    ("gem_resnet18", "heterogeneous", "hybrid_head")])
def test_every_task_logits_bit_identical_after_later_tasks(tmp_path, backbone, source, rule):
    torch.manual_seed(0)
    dm = digits_stream(4)
    module = ImpressLearnModule(backbone=backbone, num_tasks=4, num_classes=dm.num_classes,
                                input_shape=dm.input_shape, num_impressions=2, impression_source=source,
                                mask_rule=TopK(0.3), **RULES[rule])
    probe = LogitsProbe(torch.randn(16, *dm.input_shape))
    fit(module, dm, tmp_path, [probe])
    assert sorted(probe.after_task) == [0, 1, 2, 3]
    for task, logits in probe.after_task.items():
        assert torch.equal(logits, probe.at_end[task]), f"task {task} changed after later tasks"
    # The retention matrix agrees: every column is constant below its diagonal.
    evaluator = next(c for c in module.trainer.callbacks if isinstance(c, RetentionEvaluator))
    for j in range(4):
        column = [evaluator.matrix[i][j] for i in range(j, 4)]
        assert column == [column[0]] * len(column)


def snapshot_finished_state(module: ImpressLearnModule, upto: int) -> dict[str, torch.Tensor]:
    """Every tensor tasks < upto depend on: bank bits, their α, their BN rows (and the frozen weights)."""
    state = {f"alpha{t}": module.table.coefficients[t].detach().clone() for t in range(upto)}
    for i, layer in enumerate(module.net.layers):
        state[f"bank{i}"] = layer.bank.packed.clone()
        state[f"weight{i}"] = layer.weight.clone()
    for i, bn in enumerate(module.net.batchnorms):
        state[f"bn_mean{i}"] = bn.task_mean[:upto].clone()
        state[f"bn_var{i}"] = bn.task_var[:upto].clone()
    return state


class IsolationProbe(L.Callback):
    """At each task's first and last batch, compares the state of earlier tasks with a snapshot."""

    def __init__(self) -> None:
        self.before, self.checked = {}, []

    def on_train_epoch_start(self, trainer, module) -> None:
        stage = module.current_stage
        if trainer.current_epoch == stage.first_epoch and stage.completes_task:
            self.before[stage.task] = snapshot_finished_state(module, stage.task)

    def on_train_epoch_end(self, trainer, module) -> None:
        stage = module.current_stage
        if trainer.current_epoch == stage.last_epoch and stage.task in self.before:
            after = snapshot_finished_state(module, stage.task)
            for key, value in self.before[stage.task].items():
                if key.startswith("bank"):  # earlier masks unchanged; this stage may append its own
                    rows = len(module.net.layers[0].bank) - (1 if stage.kind == "impression" else 0)
                    value, now = value[:rows], after[key][:rows]
                else:
                    now = after[key]
                assert torch.equal(value, now), f"task {stage.task}'s optimiser changed {key}"
            # Only the current stage's parameters ever hold gradients or optimiser state.
            active = {id(p) for p in ([l.scores for l in module.net.layers] if stage.kind == "impression"
                                      else [module.table.coefficients[stage.task]])}
            for opt in module.optimizers():
                for p in opt.optimizer.state:
                    assert id(p) in active
            self.checked.append(stage.task)


def test_optimiser_of_task_t_never_changes_earlier_tasks(tmp_path):
    dm = digits_stream(4)
    module = ImpressLearnModule(backbone="gem_resnet18", num_tasks=4, num_classes=dm.num_classes,
                                input_shape=dm.input_shape, num_impressions=2, mask_rule=TopK(0.3))
    probe = IsolationProbe()
    fit(module, dm, tmp_path, [probe])
    assert probe.checked == [0, 1, 2, 3]
