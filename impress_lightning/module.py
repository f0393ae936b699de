"""ImpressLearnModule: the LightningModule that learns a whole task stream in one ``fit``.

Run: ``impress-lightning fit --config configs/quickstart.yaml``

Impression stages learn a supermask (scores, straight-through mask rule); at the end of the stage
``FreezeImpressions`` freezes it into the bit-packed bank. Combination stages learn only the task's
coefficients in the task table. Nothing a finished task uses is ever written again, so earlier tasks keep
their exact outputs. The module trains; what a task *is* lives in :class:`~impress_lightning.tasks.TaskTable`.
"""

from __future__ import annotations

import math
from typing import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR

from impress_lightning.backbones import build_backbone
from impress_lightning.config_checks import AlphaStart, check_module_config
from impress_lightning.distributed import sync_task_statistics
from impress_lightning.metrics import task_accuracy
from impress_lightning.nn import (
    CombinationRule, Global, LearnMask, MaskRule, PerLayer, PerNeuron, Selection, SupermaskNet, Threshold, TopK,
    select,
)
from impress_lightning.hybrid import HybridHead
from impress_lightning.inference.objectives import entropy_objective
from impress_lightning.placement import AdaptiveBank
from impress_lightning.schedule import ImpressionSource, Stage, TaskSchedule
from impress_lightning.tasks import TaskTable, plan_slots

# Modules built in Python keep these objects in their hyper-parameters; allowing them keeps
# ``load_from_checkpoint(weights_only=True)`` working (LightningCLI runs store plain config dicts instead).
torch.serialization.add_safe_globals([TopK, Threshold, PerLayer, Global, PerNeuron, AdaptiveBank, HybridHead])


class ImpressLearnModule(L.LightningModule):
    """ImpressLearn (and the SupSup baseline) over one frozen signed-constant backbone.

    Args:
        backbone: "lenet_300_100", "fc1024", "gem_resnet18", or "torchvision.<model>" (e.g. torchvision.resnet50).
        num_tasks: tasks in the stream (linked from the datamodule).
        num_classes: labelled outputs per task (linked from the datamodule).
        input_shape: (C, H, W) of one example (linked from the datamodule).
        num_impressions: K, the number of impressions (heterogeneous: the first K tasks unless
            ``impression_tasks`` names them; ignored for "supsup" and with ``adaptive_bank``).
        impression_source: "heterogeneous" (tasks of the stream), "homogeneous" (K seeds of task 0), "random"
            (untrained random masks), or "supsup" (a dedicated mask for every task: the baseline).
        impression_tasks: heterogeneous only: the tasks that learn impressions (must include 0); default the
            first ``num_impressions`` tasks.
        adaptive_bank: heterogeneous only: grow the bank while the stream needs it (``impression_tasks`` are
            then the tasks that are impressions regardless, default [0]).
        combination: how each layer's coefficients are shaped (``PerLayer``, ``Global``, ``PerNeuron``);
            default ``PerNeuron()`` (one coefficient per impression and output neuron of every layer).
        mask_rule: how scores become masks (``TopK``, ``Threshold``); default ``TopK(density=0.5)``.
        hybrid_head: try a dedicated last-layer mask for every combination task after its coefficients and
            keep it where it wins on the validation split (``HybridHead``); default off.
        alpha_start: "best_impression" (one-hot on the stored impression that scores best on the task's
            probe examples) or "uniform" (1/K on every impression, the research code's start).
        impression_epochs: epochs per impression stage.
        combination_epochs: epochs per combination task.
        mask_optimizer: optimiser for mask scores; default Adam(lr=1e-3).
        alpha_optimizer: optimiser for α; default Adam(lr=0.1, weight_decay=1e-4).
        cosine_schedule: cosine-anneal the learning rate to 0 within each stage.
        alpha_regularization: λ of λ·Σ_rows (‖α_row‖₁ − 1)².
        extra_outputs: never-labelled head outputs (for the "superfluous neurons" task-inference objective).
        seed: backbone, score and random-mask seed; the same on every process.
        eval_cache_size: finished tasks whose combined weights stay materialised for evaluation.
        probe_batches: batches of a task's probe examples used to score the stored impressions (one-hot start)
            and, once the task is learned, to measure its baseline entropy (calibrated task inference).
        feature_signatures: once each task is learned, record its feature signature (its mean first-layer
            features on up to 8,192 of its probe examples) so checkpoints and exported banks can infer tasks by
            feature matching (``TaskInference(strategy="feature_match")``). It stores one float16 per output
            unit of the first layer per task, counted in the task's stored bytes.
    """

    def __init__(
        self,
        backbone: str = "lenet_300_100",
        num_tasks: int = 5,
        num_classes: int = 10,
        input_shape: Sequence[int] = (1, 28, 28),
        num_impressions: int = 3,
        impression_source: ImpressionSource = "heterogeneous",
        impression_tasks: list[int] | None = None,
        adaptive_bank: AdaptiveBank | None = None,
        combination: CombinationRule | None = None,
        mask_rule: MaskRule | None = None,
        hybrid_head: HybridHead | None = None,
        alpha_start: AlphaStart = "best_impression",
        impression_epochs: int = 1,
        combination_epochs: int = 1,
        mask_optimizer: OptimizerCallable | None = None,
        alpha_optimizer: OptimizerCallable | None = None,
        cosine_schedule: bool = True,
        alpha_regularization: float = 5e-3,
        extra_outputs: int = 0,
        seed: int = 0,
        eval_cache_size: int = 2,
        probe_batches: int = 2,
        feature_signatures: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["mask_optimizer", "alpha_optimizer"])
        self.automatic_optimization = False  # two optimisers of fixed structure; the stage picks one
        check_module_config(impression_source, num_tasks, num_impressions, impression_tasks, adaptive_bank, alpha_start,
                      probe_batches, hybrid_head)
        self.num_tasks, self.num_classes = num_tasks, num_classes
        self.rule = mask_rule or TopK()
        self.adaptive_bank, self.hybrid_head = adaptive_bank, hybrid_head
        slots = plan_slots(impression_source, num_tasks, num_impressions,
                           [0] if adaptive_bank and impression_tasks is None else impression_tasks,
                           adaptive=adaptive_bank is not None)
        capacity = (num_tasks if impression_source == "supsup" else adaptive_bank.max_impressions if adaptive_bank
                    else num_impressions)
        self.net = SupermaskNet(
            build_backbone(backbone, tuple(input_shape), num_classes + extra_outputs, bank_capacity=capacity,
                           num_tasks=num_tasks, seed=seed),
            cache_size=eval_cache_size)
        self.table = TaskTable(slots, capacity, combination or PerNeuron(),
                               [layer.weight.shape for layer in self.net.layers], hybrid_heads=hybrid_head is not None,
                               signatures=feature_signatures)
        self.homogeneous = num_impressions if impression_source == "homogeneous" else 0
        self.mask_optimizer, self.alpha_optimizer = mask_optimizer, alpha_optimizer
        self.train_acc, self.val_acc = task_accuracy(num_classes), task_accuracy(num_classes)
        self._schedule: TaskSchedule | None = None

    # ----- the stream ------------------------------------------------------------------------------------
    @property
    def schedule(self) -> TaskSchedule:
        """The task schedule of the config and the placement decisions recorded so far."""
        slots = self.table.slot_list()
        if self._schedule is None or self._schedule.task_slots != slots:
            hp = self.hparams
            self._schedule = TaskSchedule(slots, hp.impression_epochs, hp.combination_epochs, self.homogeneous,
                                          self.hybrid_head.epochs if self.hybrid_head else 0)
        return self._schedule

    @property
    def source(self) -> str:
        """Where the impressions come from: the config's impression_source ("adaptive" with an adaptive bank)."""
        return "adaptive" if self.adaptive_bank is not None else self.hparams.impression_source

    @property
    def tasks_learned(self) -> Tensor:
        """How many tasks are finished (state: ``test`` and export on a checkpoint know which tasks exist)."""
        return self.table.num_learned

    @property
    def current_stage(self) -> Stage:
        return self.schedule.stage_of_epoch(self.trainer.current_epoch)

    @property
    def bank_size(self) -> int:
        """Masks stored in every layer's bank so far."""
        return len(self.net.layers[0].bank)

    def task_selection(self, task: int) -> Selection:
        """The frozen weights of a finished ``task``: its impression or its combination."""
        slot = self.table.slot_of(task)
        if slot is not None and self.bank_size <= slot:
            raise RuntimeError(f"task {task}'s impression is not frozen yet: add FreezeImpressions to the "
                               "trainer's callbacks (before RetentionEvaluator)")
        return self.table.selection(task)

    def task_coefficients(self, num_tasks: int | None = None) -> tuple[Tensor, ...]:
        """K-space rows (per masked layer ``[T, ..., n]``) of the first ``num_tasks`` tasks (default: the
        finished ones) over the n masks stored so far; see :meth:`TaskTable.kspace_rows`."""
        count = int(self.tasks_learned) if num_tasks is None else num_tasks
        return self.table.kspace_rows(count, self.bank_size)

    def training_selection(self, stage: Stage) -> Selection:
        if stage.kind == "impression":
            return LearnMask(self.rule)
        if stage.kind == "head":  # the frozen combination below the head mask being learned
            return self.table.with_head(stage.task, LearnMask(self.rule))
        return self.table.selection(stage.task)

    def forward(self, x: Tensor, task: int) -> Tensor:
        """Logits of a finished ``task`` (cached combined weights when no gradient is recorded)."""
        return self.net(x, self.task_selection(task), bn_task=task, cache_key=task)

    def predict_task(self, x: Tensor, task: int) -> Tensor:
        """Predicted labels (argmax over the labelled outputs) of finished ``task``."""
        return self(x, task)[:, : self.num_classes].argmax(dim=1)

    # ----- set-up ----------------------------------------------------------------------------------------
    def configure_callbacks(self) -> list[L.Callback]:
        """The callbacks the algorithm cannot run without, in the order they must run: ``FreezeImpressions``
        then ``RetentionEvaluator`` (the trainer's own instances where it has them, with their settings), and a
        ``NonFiniteGuard``; see :func:`~impress_lightning.callbacks.ordering.stream_callbacks`."""
        from impress_lightning.callbacks.ordering import stream_callbacks

        return stream_callbacks(self.trainer.callbacks if self._trainer is not None else [])

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "follow_schedule"):
            dm.follow_schedule(lambda epoch: self.schedule.task_of_epoch(epoch))
        if stage == "fit":
            if self.trainer.max_epochs != self.schedule.total_epochs:
                raise ValueError(f"trainer.max_epochs={self.trainer.max_epochs} but the task schedule has "
                                 f"{self.schedule.total_epochs} epochs: set Trainer(max_epochs="
                                 "module.schedule.total_epochs) (the CLI does this for you)")
            if self.trainer.reload_dataloaders_every_n_epochs != 1:
                raise ValueError("set trainer.reload_dataloaders_every_n_epochs=1: each epoch's task decides its loader")
            if self.hybrid_head is not None and getattr(dm, "val_fraction", None) == 0:
                raise ValueError("model.hybrid_head compares its candidates on the validation split: set "
                                 "data.val_fraction > 0 (e.g. 0.1)")

    def on_fit_start(self) -> None:
        if self.device.type == "cpu" and not select.kernel_loaded():
            rank_zero_info(f"[impress] {select.kernel_status()}")  # mask learning runs, only slower
        if self.hparams.impression_source == "random" and self.bank_size == 0:
            self.fill_random_impressions()

    def fill_random_impressions(self) -> None:
        """Bank K never-trained random masks at the rule's density (seeded: identical on every process)."""
        for slot in range(self.table.capacity):
            for i, layer in enumerate(self.net.layers):
                layer.reset_scores(self.hparams.seed * 7919 + slot * 131 + i + 1)
                layer.bank.add(self.rule(layer.scores).detach())

    # ----- stage boundaries ------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        stage = self.current_stage
        if self.trainer.current_epoch != stage.first_epoch:
            return
        from impress_lightning.stages import start_stage  # the placement and start rules of a new stage

        start_stage(self, stage)
        if stage.index > 0:
            self.trainer.strategy.setup_optimizers(self.trainer)  # fresh optimiser state for every task

    def on_train_epoch_end(self) -> None:
        stage = self.current_stage
        if self.trainer.current_epoch == stage.last_epoch and stage.completes_task:
            self.table.num_learned.fill_(stage.task + 1)
            if stage.task == self.num_tasks - 1:
                self.trainer.should_stop = True  # an adaptive schedule's max_epochs is only an upper bound

    def on_train_batch_end(self, outputs: Tensor, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        sync_task_statistics(self, self.current_stage.task)

    def freeze_stage(self, stage: Stage) -> None:
        """Freeze what ``stage`` learned: its mask into bank slot ``stage.slot`` of every layer, its
        coefficients at their stored precision, or its head decision; then, once the task is complete and the
        datamodule has probe examples, its baseline entropy (calibrated task inference) and, with
        ``feature_signatures``, its feature signature."""
        if stage.kind == "combination":
            self.table.finish(stage.task)
        elif stage.kind == "head":
            from impress_lightning.hybrid import decide_head

            decide_head(self, stage.task, self.rule(self.net.layers[-1].scores).detach())
        else:
            for layer in self.net.layers:
                if len(layer.bank) != stage.slot:
                    raise RuntimeError(f"bank holds {len(layer.bank)} masks, expected {stage.slot} before freezing")
                layer.bank.add(self.rule(layer.scores).detach())
        if stage.completes_task and hasattr(getattr(self._trainer, "datamodule", None), "probe_loader"):
            from impress_lightning.stages import SIGNATURE_EXAMPLES, held_out_features, held_out_score

            self.table.baseline_entropy[stage.task] = held_out_score(self, stage.task, entropy_objective)
            if self.hparams.feature_signatures:
                self.table.record_signature(stage.task, held_out_features(self, stage.task, SIGNATURE_EXAMPLES))

    # ----- optimisation ----------------------------------------------------------------------------------
    def configure_optimizers(self):
        scores = [layer.scores for layer in self.net.layers]
        mask_opt = (self.mask_optimizer or (lambda p: torch.optim.Adam(p, lr=1e-3)))(scores)
        alpha_opt = (self.alpha_optimizer or (lambda p: torch.optim.Adam(p, lr=0.1, weight_decay=1e-4)))(
            list(self.table.coefficients))
        # The stage's cosine goes through Lightning's scheduler API (LearningRateMonitor sees it); both are
        # re-created with the optimisers at every stage boundary.
        return [mask_opt, alpha_opt], [LambdaLR(opt, self.stage_lr_factor) for opt in (mask_opt, alpha_opt)]

    def stage_lr_factor(self, step: int) -> float:
        """Learning-rate factor ``step`` optimiser steps into the current stage (cosine to 0, or 1)."""
        if not self.hparams.cosine_schedule or self._trainer is None:
            return 1.0
        per_epoch = self.trainer.num_training_batches
        if not math.isfinite(per_epoch) or per_epoch < 1:
            return 1.0  # before the stage's loader exists (the scheduler's first call)
        per_epoch = int(per_epoch)
        datamodule = self.trainer.datamodule
        if getattr(datamodule, "batches_per_step", 1) > 1:  # several optimiser steps to a loader item
            per_epoch = datamodule.optimizer_steps(per_epoch, len(self.trainer.train_dataloader.sampler))
        total = self.current_stage.epochs * per_epoch
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))

    def training_step(self, batch: tuple[Tensor, Tensor] | list[tuple[Tensor, Tensor]], batch_idx: int) -> Tensor:
        """One optimiser step on an ``(x, y)`` batch, or one on each batch of a group (the datamodule's
        ``batches_per_step`` > 1), in order. Returns the detached loss, or the group's losses ``[n]``."""
        stage = self.current_stage
        active = 1 if stage.kind == "combination" else 0  # impression and head stages learn mask scores
        opt, scheduler = self.optimizers()[active], self.lr_schedulers()[active]
        selection = self.training_selection(stage)
        losses = []
        for x, y in ([batch] if torch.is_tensor(batch[0]) else batch):
            logits = self.net(x, selection, bn_task=stage.task)
            loss = F.cross_entropy(logits, y)
            if stage.kind == "combination":
                loss = loss + self.hparams.alpha_regularization * self.table.penalty(stage.task)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            scheduler.step()
            losses.append(loss.detach())
        loss = losses[0] if len(losses) == 1 else torch.stack(losses)
        if self.logger_writes_this_step():  # the group's mean loss, the accuracy of its last batch
            self.train_acc(logits[:, : self.num_classes].detach(), y)
            self.log_dict({"train/loss": loss.mean(), "train/acc": self.train_acc, "task": float(stage.task)},
                          prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def logger_writes_this_step(self) -> bool:
        """Whether Lightning writes this training step's logged values (every ``log_every_n_steps``-th
        training batch, Lightning's own rule): ``self.log`` on the other steps is thrown away but costs about as
        much as a LeNet step, so training logs only here."""
        return bool(self.trainer.fast_dev_run) or self.trainer._logger_connector.should_update_logs

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        stage = self.current_stage
        logits = self.net(x, self.training_selection(stage), bn_task=stage.task)
        self.val_acc(logits[:, : self.num_classes], y)
        self.log("val/acc", self.val_acc, prog_bar=True, on_epoch=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx >= int(self.tasks_learned):
            return  # a task the checkpoint has not learned yet
        x, y = batch
        acc = (self.predict_task(x, dataloader_idx) == y).float().mean()
        self.log(f"test/acc_task{dataloader_idx:02d}", acc, add_dataloader_idx=False, batch_size=len(y))

    def placement(self, task: int) -> dict[str, object]:
        """Why ``task`` is what it is (retention.json); see :func:`~impress_lightning.placement.placement_record`."""
        from impress_lightning.placement import placement_record

        return placement_record(self.table, task, self.schedule.kind_of_task(task), self.adaptive_bank)

    # ----- storage ---------------------------------------------------------------------------------------
    def task_storage(self, task: int) -> dict[str, int]:
        """What ``task`` stores: trainable parameters while it learned, bytes kept afterwards (BN separately)."""
        bn_bytes = sum(2 * bn.num_features * 4 for bn in self.net.batchnorms)
        return {**self.table.storage(task, [layer.bank.numel for layer in self.net.layers]), "bn_bytes": bn_bytes}

