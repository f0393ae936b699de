"""ImpressLearnModule: the LightningModule that learns a whole task stream in one ``fit``.

Run: ``impress-lightning fit --config configs/quickstart.yaml``

Impression stages learn a supermask (scores, straight-through top-k); callbacks.FreezeImpressions freezes it
into the bit-packed bank at the end of the stage. Combination stages learn only α. Nothing a finished task
uses is ever written again, so earlier tasks keep their exact outputs.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from impress_lightning.backbones import build_backbone
from impress_lightning.metrics import task_accuracy
from impress_lightning.nn import Combine, Impression, LearnMask, Selection, SupermaskNet, Threshold, TopK
from impress_lightning.schedule import ImpressionSource, Stage, TaskSchedule


class ImpressLearnModule(L.LightningModule):
    """ImpressLearn (and the SupSup baseline) over one frozen signed-constant backbone.

    Args:
        backbone: "lenet_300_100", "fc1024", "gem_resnet18", or "torchvision.<model>" (e.g. torchvision.resnet50).
        num_tasks: tasks in the stream (linked from the datamodule).
        num_classes: labelled outputs per task (linked from the datamodule).
        input_shape: (C, H, W) of one example (linked from the datamodule).
        num_impressions: K, the number of impressions (ignored for impression_source="supsup").
        impression_source: "heterogeneous" (first K tasks), "homogeneous" (K seeds of task 0), "random"
            (untrained random masks), or "supsup" (a dedicated mask for every task: the baseline).
        alpha_granularity: "layer" (L×K coefficients per task) or "global" (K per task).
        density: fraction of weights each impression keeps per layer (top-k rule).
        er_scale: if set, per-layer densities follow the ER rule with this knob instead of ``density``.
        mask_rule: "topk" (impressions, default) or "threshold" (SupSup's scores >= 0 rule).
        impression_epochs: epochs per impression stage.
        combination_epochs: epochs per combination task.
        mask_optimizer: optimiser for mask scores; default Adam(lr=1e-3).
        alpha_optimizer: optimiser for α; default Adam(lr=1e-2, weight_decay=1e-2).
        cosine_schedule: cosine-anneal the learning rate to 0 within each stage.
        alpha_regularization: λ of λ·Σ_l (‖α_l‖₁ − 1)².
        extra_outputs: never-labelled head outputs (for the "superfluous neurons" task-inference objective).
        seed: backbone, score and random-mask seed; the same on every process.
        eval_cache_size: finished tasks whose combined weights stay materialised for evaluation.
    """

    def __init__(
        self,
        backbone: str = "lenet_300_100",
        num_tasks: int = 5,
        num_classes: int = 10,
        input_shape: Sequence[int] = (1, 28, 28),
        num_impressions: int = 3,
        impression_source: ImpressionSource = "heterogeneous",
        alpha_granularity: Literal["layer", "global"] = "layer",
        density: float = 0.1,
        er_scale: float | None = None,
        mask_rule: Literal["topk", "threshold"] = "topk",
        impression_epochs: int = 1,
        combination_epochs: int = 1,
        mask_optimizer: OptimizerCallable | None = None,
        alpha_optimizer: OptimizerCallable | None = None,
        cosine_schedule: bool = True,
        alpha_regularization: float = 5e-3,
        extra_outputs: int = 0,
        seed: int = 0,
        eval_cache_size: int = 2,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["mask_optimizer", "alpha_optimizer"])
        self.automatic_optimization = False  # two optimisers of fixed structure; the stage picks one
        self.schedule = TaskSchedule(num_tasks, num_impressions, impression_source, impression_epochs,
                                     combination_epochs)
        self.num_tasks, self.num_classes = num_tasks, num_classes
        self.rule = Threshold() if mask_rule == "threshold" else TopK(density, er_scale)
        self.net = SupermaskNet(
            build_backbone(backbone, tuple(input_shape), num_classes + extra_outputs,
                           bank_capacity=self.schedule.bank_size, num_tasks=num_tasks, seed=seed),
            cache_size=eval_cache_size)
        k = self.schedule.bank_size
        shape = (self.net.num_layers, k) if alpha_granularity == "layer" else (k,)
        # Every parameter that will ever train exists and requires grad from the start (DDP-safe); the
        # optimiser only ever gives gradients to the current stage's ones.
        self.alphas = nn.ParameterList([nn.Parameter(torch.full(shape, 1.0 / max(k, 1))) for _ in range(num_tasks)])
        self.mask_optimizer, self.alpha_optimizer = mask_optimizer, alpha_optimizer
        # How many tasks are finished: state, so `test` / export on a checkpoint know which tasks exist.
        self.register_buffer("tasks_learned", torch.zeros((), dtype=torch.long))
        self.train_acc, self.val_acc = task_accuracy(num_classes), task_accuracy(num_classes)

    # ----- what a task is --------------------------------------------------------------------------------
    @property
    def current_stage(self) -> Stage:
        return self.schedule.stage_of_epoch(self.trainer.current_epoch)

    def task_selection(self, task: int) -> Selection:
        """The frozen weights of a finished ``task``: its impression or its α combination."""
        slot = self.schedule.impression_slot_of_task(task)
        if slot is not None:
            if len(self.net.layers[0].bank) <= slot:
                raise RuntimeError(f"task {task}'s impression is not frozen yet: add callbacks.FreezeImpressions "
                                   "to the trainer's callbacks (before RetentionEvaluator)")
            return Impression(slot)
        return Combine(self.alphas[task])

    def task_coefficients(self, num_tasks: int | None = None) -> Tensor:
        """Coefficients ``[T, L, n]`` of the first ``num_tasks`` tasks (default: the finished ones) over the
        n masks stored so far: one-hot rows for impression tasks, α (broadcast to every layer if global)
        otherwise. (Combination tasks only exist once all K impressions are stored, so their α has size n.)"""
        count = int(self.tasks_learned) if num_tasks is None else num_tasks
        n, layers = len(self.net.layers[0].bank), self.net.num_layers
        rows = []
        for task in range(count):
            slot = self.schedule.impression_slot_of_task(task)
            if slot is not None:
                rows.append(torch.nn.functional.one_hot(torch.tensor(slot), n).float().expand(layers, n))
            else:
                rows.append(self.alphas[task].detach().cpu().expand(layers, n))
        return torch.stack(rows).to(self.device) if rows else torch.zeros(0, layers, n, device=self.device)

    def training_selection(self, stage: Stage) -> Selection:
        return LearnMask(self.rule) if stage.kind == "impression" else Combine(self.alphas[stage.task])

    def forward(self, x: Tensor, task: int) -> Tensor:
        """Logits of a finished ``task`` (cached combined weights when no gradient is recorded)."""
        return self.net(x, self.task_selection(task), bn_task=task, cache_key=task)

    def predict_task(self, x: Tensor, task: int) -> Tensor:
        """Predicted labels (argmax over the labelled outputs) of finished ``task``."""
        return self(x, task)[:, : self.num_classes].argmax(dim=1)

    # ----- stage boundaries ------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "follow_schedule"):
            dm.follow_schedule(self.schedule.task_of_epoch)
        if stage == "fit":
            if self.trainer.max_epochs != self.schedule.total_epochs:
                raise ValueError(f"trainer.max_epochs={self.trainer.max_epochs} but the task schedule has "
                                 f"{self.schedule.total_epochs} epochs: set Trainer(max_epochs="
                                 "module.schedule.total_epochs) (the CLI does this for you)")
            if self.trainer.reload_dataloaders_every_n_epochs != 1:
                raise ValueError("set trainer.reload_dataloaders_every_n_epochs=1: each epoch's task decides its loader")

    def on_fit_start(self) -> None:
        if self.schedule.source == "random" and len(self.net.layers[0].bank) == 0:
            self.fill_random_impressions()

    def fill_random_impressions(self) -> None:
        """Bank K never-trained random masks at the rule's density (seeded: identical on every process)."""
        for slot in range(self.schedule.bank_size):
            for i, layer in enumerate(self.net.layers):
                layer.reset_scores(self.hparams.seed * 7919 + slot * 131 + i + 1)
                layer.bank.add(self.rule(layer.scores).detach())

    def on_train_epoch_start(self) -> None:
        stage = self.current_stage
        if self.trainer.current_epoch != stage.first_epoch:
            return
        if stage.kind == "impression":
            for i, layer in enumerate(self.net.layers):
                layer.reset_scores(self.hparams.seed * 1_000_003 + stage.index * 1009 + i)
        elif len(self.net.layers[0].bank) < self.schedule.bank_size:
            raise RuntimeError(f"stage {stage.index} combines {self.schedule.bank_size} impressions but the bank "
                               f"holds {len(self.net.layers[0].bank)}: add callbacks.FreezeImpressions")
        if stage.index > 0:
            self.trainer.strategy.setup_optimizers(self.trainer)  # fresh optimiser state for every task

    def on_train_epoch_end(self) -> None:
        stage = self.current_stage
        if self.trainer.current_epoch == stage.last_epoch and stage.completes_task:
            self.tasks_learned.fill_(stage.task + 1)

    def on_train_batch_end(self, outputs: Tensor, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.sync_task_statistics(self.current_stage.task)

    def sync_task_statistics(self, task: int) -> None:
        """Average ``task``'s BN running statistics over the DDP processes (nothing to do on one process).

        Under manual optimisation Lightning keeps DDP from syncing buffers after the first step (measured with
        GEM ResNet-18 on 2 processes: the ranks' statistics drifted apart by 0.1 within two steps), so without
        this each rank would evaluate, and rank zero would checkpoint, statistics of its own data shard only.
        """
        if self.trainer.world_size == 1 or not self.net.batchnorms:
            return
        rows = [row for bn in self.net.batchnorms for row in (bn.task_mean[task], bn.task_var[task])]
        mean = self.trainer.strategy.reduce(torch.cat(rows), reduce_op="mean")
        with torch.no_grad():
            for row, value in zip(rows, mean.split([row.numel() for row in rows])):
                row.copy_(value)

    def freeze_impression(self, stage: Stage) -> None:
        """Freeze the mask learned in impression ``stage`` into bank slot ``stage.slot`` of every layer."""
        for layer in self.net.layers:
            if len(layer.bank) != stage.slot:
                raise RuntimeError(f"bank holds {len(layer.bank)} masks, expected {stage.slot} before freezing")
            layer.bank.add(self.rule(layer.scores).detach())

    # ----- optimisation ----------------------------------------------------------------------------------
    def configure_optimizers(self):
        scores = [layer.scores for layer in self.net.layers]
        mask_opt = (self.mask_optimizer or (lambda p: torch.optim.Adam(p, lr=1e-3)))(scores)
        alpha_opt = (self.alpha_optimizer or (lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2)))(
            list(self.alphas))
        for opt in (mask_opt, alpha_opt):
            for group in opt.param_groups:
                group.setdefault("initial_lr", group["lr"])
        return [mask_opt, alpha_opt]

    def _stage_lr_factor(self, stage: Stage, batch_idx: int) -> float:
        if not self.hparams.cosine_schedule:
            return 1.0
        per_epoch = max(1, int(self.trainer.num_training_batches))
        done = (self.trainer.current_epoch - stage.first_epoch) * per_epoch + batch_idx
        return 0.5 * (1.0 + math.cos(math.pi * done / (stage.epochs * per_epoch)))

    def alpha_penalty(self, alpha: Tensor) -> Tensor:
        """λ·Σ_l (‖α_l‖₁ − 1)²."""
        rows = alpha if alpha.dim() == 2 else alpha.unsqueeze(0)
        return self.hparams.alpha_regularization * ((rows.abs().sum(dim=1) - 1.0) ** 2).sum()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        stage = self.current_stage
        logits = self.net(x, self.training_selection(stage), bn_task=stage.task)
        loss = F.cross_entropy(logits, y)
        if stage.kind == "combination":
            loss = loss + self.alpha_penalty(self.alphas[stage.task])
        opt = self.optimizers()[0 if stage.kind == "impression" else 1]
        factor = self._stage_lr_factor(stage, batch_idx)
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * factor
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.train_acc(logits[:, : self.num_classes].detach(), y)
        self.log_dict({"train/loss": loss.detach(), "train/acc": self.train_acc, "task": float(stage.task)},
                      prog_bar=True, on_step=True, on_epoch=False)
        return loss.detach()

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

    # ----- storage ---------------------------------------------------------------------------------------
    def task_storage(self, task: int) -> dict[str, int]:
        """What ``task`` stores: trainable parameters while it learned, bytes kept afterwards (BN separately)."""
        bn_bytes = sum(2 * bn.num_features * 4 for bn in self.net.batchnorms)
        if self.schedule.kind_of_task(task) == "impression":
            masks = sum(layer.bank.numel for layer in self.net.layers)
            return {"trainable_parameters": masks, "stored_bytes": sum((n + 7) // 8 for n in
                    (layer.bank.numel for layer in self.net.layers)), "bn_bytes": bn_bytes}
        n = self.alphas[task].numel()
        return {"trainable_parameters": n, "stored_bytes": 4 * n, "bn_bytes": bn_bytes}
