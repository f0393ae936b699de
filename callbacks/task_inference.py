"""TaskInferenceEvaluator: accuracy when the task id is NOT given at test time (GNs / GNu scenarios)."""

from __future__ import annotations

import json
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from impress_lightning.atomic import atomic_write
from impress_lightning.callbacks.retention import rank_shard, run_directory
from impress_lightning.stages import to_device
from impress_lightning.inference import InferenceTally, TaskInference, score_inference


class TaskInferenceEvaluator(L.Callback):
    """After each task (and in ``impress-lightning test``), evaluates every seen task with the task id
    inferred from each test batch, next to the task-id-given accuracy of ``RetentionEvaluator``.

    Per method it records, for every seen task, the task-inference accuracy (batches whose task was
    inferred right; α-fit makes no discrete choice) and the accuracy with inferred ids. Labels are "shared"
    (GNs: permuted / rotated tasks, all digits 0-9) or "unshared" (GNu: class splits; a batch whose task is
    inferred wrongly counts as all wrong). Writes ``task_inference.json`` into the run directory.

    Args:
        methods: the inference strategies to compare (strategy, objective, number of examples, ...).
        labels: "shared" (GNs), "unshared" (GNu), or "auto" (unshared when the datamodule remaps labels).
        split: "test" or "val" examples.
        batch_size: examples per inferred batch (SupSup used 128).
        max_batches_per_task: cap on batches per task and evaluation (inference is costlier than a forward
            pass); None evaluates every batch.
        every_task: evaluate after every task; False evaluates only after the last task (and in ``test``).
    """

    def __init__(self, methods: list[TaskInference] | None = None, labels: Literal["auto", "shared", "unshared"] = "auto",
                 split: Literal["test", "val"] = "test", batch_size: int = 128, max_batches_per_task: int | None = 20,
                 every_task: bool = True) -> None:
        self.methods = methods or [TaskInference()]
        self.labels, self.split, self.batch_size = labels, split, batch_size
        self.max_batches, self.every_task = max_batches_per_task, every_task
        self.results: dict[str, Any] = {}

    @staticmethod
    def method_name(method: TaskInference) -> str:
        name = f"{method.strategy}-{method.objective}"
        return name + (f"-n{method.num_examples}" if method.num_examples else "")

    def state_dict(self) -> dict[str, Any]:
        return {"results": self.results}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.results = state_dict["results"]

    def shared_labels(self, trainer: L.Trainer) -> bool:
        if self.labels != "auto":
            return self.labels == "shared"
        return getattr(trainer.datamodule, "label_maps", None) is None

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, module: L.LightningModule, seen: int) -> dict[str, Any]:
        """Inferred-id accuracy and task-inference accuracy of every method on tasks ``0..seen-1``."""
        was_training = module.training
        module.eval()
        coeffs, shared = module.task_coefficients(seen), self.shared_labels(trainer)
        classify = lambda x, task: module(x, task)[:, : module.num_classes]  # noqa: E731 (cached path)
        report: dict[str, Any] = {"labels": "shared" if shared else "unshared", "tasks": seen, "methods": {}}
        for method in self.methods:
            per_task = []
            for task in range(seen):
                loader = trainer.datamodule.eval_dataloader(task, self.split)
                loader = DataLoader(loader.dataset, batch_size=self.batch_size, collate_fn=loader.collate_fn)
                tally = InferenceTally()
                for i, batch in enumerate(rank_shard(loader, trainer)):
                    if self.max_batches is not None and i >= self.max_batches:
                        break
                    x, y = to_device(batch, trainer)
                    result = method.infer(module.net, x, coeffs, num_classes=module.num_classes, classify=classify)
                    tally = tally + score_inference(task, result.task, result.logits.argmax(1), y, shared_labels=shared)
                counts = torch.tensor([tally.correct, tally.total, tally.task_hits, tally.task_trials],
                                      dtype=torch.float64, device=module.device)
                counts = trainer.strategy.reduce(counts, reduce_op="sum")
                per_task.append({"accuracy": float(counts[0] / counts[1]),
                                 "task_accuracy": float(counts[2] / counts[3]) if counts[3] > 0 else None})
            accs = [t["accuracy"] for t in per_task]
            task_accs = [t["task_accuracy"] for t in per_task if t["task_accuracy"] is not None]
            report["methods"][self.method_name(method)] = {
                "per_task": per_task, "accuracy": sum(accs) / len(accs),
                "task_accuracy": sum(task_accs) / len(task_accs) if task_accs else None}
        module.train(was_training)
        return report

    def _record(self, trainer: L.Trainer, module: L.LightningModule, seen: int, log: bool) -> None:
        report = self.evaluate(trainer, module, seen)
        self.results[str(seen - 1)] = report
        for name, summary in report["methods"].items():
            task_acc = summary["task_accuracy"]
            rank_zero_info(f"[impress] inferred task ids, {name}: accuracy {summary['accuracy']:.4f}, task "
                           f"inference {'n/a' if task_acc is None else f'{task_acc:.4f}'} ({seen} tasks)")
            if log:
                metrics = {f"inference/{name}/accuracy": summary["accuracy"]}
                if task_acc is not None:
                    metrics[f"inference/{name}/task_accuracy"] = task_acc
                module.log_dict(metrics, on_epoch=True, rank_zero_only=True)  # reduced exactly already
        if trainer.is_global_zero:
            out = run_directory(trainer, None)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write(out / "task_inference.json", json.dumps(self.results, indent=2))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stage = pl_module.current_stage
        if trainer.current_epoch != stage.last_epoch or not stage.completes_task:
            return
        if self.every_task or stage.task == pl_module.num_tasks - 1:
            self._record(trainer, pl_module, stage.task + 1, log=True)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seen = int(pl_module.tasks_learned)
        if seen:
            self._record(trainer, pl_module, seen, log=False)
