"""TaskInferenceEvaluator: accuracy when the task id is NOT given at test time (GNs / GNu scenarios)."""

from __future__ import annotations

import json
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Subset

from impress_lightning.atomic import atomic_write
from impress_lightning.callbacks.retention import rank_shard, run_directory
from impress_lightning.stages import SIGNATURE_EXAMPLES, held_out_features, held_out_score, to_device
from impress_lightning.inference import InferenceTally, TaskInference, get_score, score_inference


class TaskInferenceEvaluator(L.Callback):
    """After each task (and in ``impress-lightning test``), evaluates every seen task with the task id
    inferred from each test batch, next to the task-id-given accuracy of ``RetentionEvaluator``.

    Per method it records, for every seen task, the task-inference accuracy (batches whose task was
    inferred right) and the accuracy with inferred ids. Labels are "shared"
    (GNs: permuted / rotated tasks, all digits 0-9) or "unshared" (GNu: class splits; a batch whose task is
    inferred wrongly counts as all wrong). Writes ``task_inference.json`` into the run directory.

    Args:
        methods: the inference strategies to compare (strategy, objective, number of examples, ...).
        labels: "shared" (GNs), "unshared" (GNu), or "auto" (unshared when the datamodule remaps labels).
        split: "test" or "val" examples.
        batch_size: examples per inferred batch (SupSup used 128). How many of them drive the inference is
            each method's ``num_examples`` (SupSup: 1 on PermutedMNIST, the whole batch on rotations).
        max_batches_per_task: cap on batches per task and evaluation (inference is costlier than a forward
            pass); None evaluates every batch.
        shuffle: draw each task's batches from a seeded permutation of its examples, as SupSup does (every
            method sees the same batches); False reads the examples in dataset order (contiguous runs, which
            measured lower on RotatedMNIST).
        seed: seed of the shuffle (task t uses ``seed`` and t): a rerun gives the same batches and report.
        weight_cache_size: during the evaluation, how many tasks' combined weights stay materialised (the
            exact checks of ``shortlist`` / ``exhaustive`` then cost a plain forward each); None keeps the
            module's ``eval_cache_size``. Memory: one dense copy of the masked weights per cached task.
        every_task: evaluate after every task; False evaluates only after the last task (and in ``test``).
        signature_examples: for methods that match features (``verify_by: features``, ``feature_match``): how
            many of each task's own held-out examples (the datamodule's ``probe_loader``: its validation split,
            else its training split in a seeded order) its feature signature averages; measured once per task,
            where the task table recorded none. A whole validation split
            measured better than its first 1,024 examples (docs/task_inference.md).
    """

    def __init__(self, methods: list[TaskInference] | None = None, labels: Literal["auto", "shared", "unshared"] = "auto",
                 split: Literal["test", "val"] = "test", batch_size: int = 128, max_batches_per_task: int | None = 20,
                 shuffle: bool = True, seed: int = 0, weight_cache_size: int | None = None,
                 every_task: bool = True, signature_examples: int = SIGNATURE_EXAMPLES) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_batches_per_task is not None and max_batches_per_task < 1:
            raise ValueError(f"max_batches_per_task must be >= 1 (or None for every batch), got {max_batches_per_task}")
        if weight_cache_size is not None and weight_cache_size < 0:
            raise ValueError(f"weight_cache_size must be >= 0 (or None for the module's), got {weight_cache_size}")
        if signature_examples < 1:
            raise ValueError(f"signature_examples must be >= 1, got {signature_examples}")
        self.methods = methods or [TaskInference()]
        self.signature_examples = signature_examples
        self._baselines: dict[tuple[str, int], float] = {}  # (objective, task) -> baseline; recomputed after a resume
        self._signatures: dict[int, torch.Tensor] = {}  # task -> feature signature; likewise
        self.labels, self.split, self.batch_size = labels, split, batch_size
        self.max_batches, self.every_task = max_batches_per_task, every_task
        self.shuffle, self.seed, self.weight_cache_size = shuffle, seed, weight_cache_size
        self.results: dict[str, Any] = {}

    @staticmethod
    def method_name(method: TaskInference) -> str:
        name = f"{method.strategy}-{method.objective}"
        if method.verify_by == "features":
            name += "-features"
        elif method.calibrate != "unshared_labels":  # the default's name says nothing; the report says what it did
            name += "-calibrated" if method.calibrate == "always" else "-uncalibrated"
        if method.strategy == "shortlist":
            name += f"-{method.shortlist_by}-m{method.shortlist_size}"
            name += f"-near{method.shortlist_neighbours}" if method.shortlist_neighbours else ""
        return name + (f"-n{method.num_examples}" if method.num_examples else "")

    def task_loader(self, trainer: L.Trainer, task: int) -> DataLoader:
        """``task``'s evaluation batches: a seeded permutation of its examples (with ``shuffle``), this rank's
        share of them, in batches of ``batch_size``."""
        loader = trainer.datamodule.eval_dataloader(task, self.split)
        dataset = loader.dataset
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + task)
            dataset = Subset(dataset, torch.randperm(len(dataset), generator=gen).tolist())
        loader = DataLoader(dataset, batch_size=self.batch_size, collate_fn=loader.collate_fn)
        return rank_shard(loader, trainer)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Fail before training, not after it, when a method needs outputs the head does not have."""
        unshared = not self.shared_labels(trainer)
        if any(m.calibrates(unshared) or m.uses_signatures for m in self.methods) and \
                not hasattr(trainer.datamodule, "probe_loader"):
            raise ValueError("TaskInferenceEvaluator: calibrating and feature matching measure each task on its own "
                             "held-out examples: the datamodule needs probe_loader(task) (TaskSequenceDataModule has "
                             "one), or set the method's calibrate: never (and no feature matching)")
        if any(m.objective == "superfluous" for m in self.methods) and not pl_module.hparams.get("extra_outputs"):
            raise ValueError("TaskInferenceEvaluator: objective='superfluous' needs never-labelled head outputs: "
                             "set model.extra_outputs > 0 (e.g. --model.extra_outputs 4) or use objective='entropy'")

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
        """Inferred-id accuracy and task-inference accuracy of every method on tasks ``0..seen-1``, next to
        the task-id-given accuracy on the same batches."""
        was_training, cache_size = module.training, module.net.cache_size
        module.eval()
        if self.weight_cache_size is not None:
            module.net.cache_size = self.weight_cache_size
        try:
            shared = self.shared_labels(trainer)
            coeffs = module.task_coefficients(seen)
            given = [self.tally(trainer, module, task, None, coeffs, shared) for task in range(seen)]
            report: dict[str, Any] = {
                "labels": "shared" if shared else "unshared", "tasks": seen,
                "batches": {"size": self.batch_size, "shuffle": self.shuffle, "seed": self.seed},
                "task_given_accuracy": sum(t["accuracy"] for t in given) / seen,
                "task_given_per_task": [t["accuracy"] for t in given], "methods": {}}
            for method in self.methods:
                calibrated = method.calibrates(not shared)
                baselines = self.baselines(trainer, module, method.objective, seen) if calibrated else None
                signatures = self.signatures(module, seen) if method.uses_signatures else None
                per_task = [self.tally(trainer, module, task, method, coeffs, shared, baselines, signatures)
                            for task in range(seen)]
                report["methods"][self.method_name(method)] = {**summarize(per_task, module), "calibrated": calibrated}
        finally:
            module.net.cache_size = cache_size
            module.train(was_training)
        return report

    def baselines(self, trainer: L.Trainer, module: L.LightningModule, objective: str, seen: int) -> torch.Tensor:
        """``[seen]``: every task's mean exact score (``objective``) under its own weights on its own held-out
        examples: the entropy baseline the task table recorded when the task was learned, else (older
        checkpoints, the G objective) measured here once per task the same way."""
        stored = module.table.baseline_entropy
        for task in range(seen):
            if (objective, task) not in self._baselines:
                recorded = objective == "entropy" and float(stored[task]) >= 0
                self._baselines[objective, task] = float(stored[task]) if recorded else held_out_score(
                    module, task, get_score(objective))
        return torch.tensor([self._baselines[objective, task] for task in range(seen)], dtype=torch.float64)

    def signatures(self, module: L.LightningModule, seen: int) -> torch.Tensor:
        """``[seen, C]``: every task's feature signature on its own held-out examples: the one the task table
        recorded when the task was learned (``model.feature_signatures``), else measured here once per task."""
        table = module.table
        for task in range(seen):
            if task not in self._signatures:
                self._signatures[task] = table.feature_signatures[task].double() if table.has_signature[task] \
                    else held_out_features(module, task, self.signature_examples)
        return torch.stack([self._signatures[task] for task in range(seen)])

    def tally(self, trainer: L.Trainer, module: L.LightningModule, task: int, method: TaskInference | None,
              coeffs: tuple[torch.Tensor, ...], shared: bool, baselines: torch.Tensor | None = None,
              signatures: torch.Tensor | None = None) -> dict[str, float | None]:
        """Accuracy (and task-inference accuracy) on ``task``'s batches with ``method`` inferring the task
        among the rows of ``coeffs``, or with the true task id when ``method`` is None; counts summed exactly
        over the ranks."""
        classify = lambda x, t: module(x, t)  # noqa: E731 (the cached path; every head output)
        tally = InferenceTally()
        for i, batch in enumerate(self.task_loader(trainer, task)):
            if self.max_batches is not None and i >= self.max_batches:
                break
            x, y = to_device(batch, trainer)
            if method is None:
                tally = tally + score_inference(task, task, module.predict_task(x, task), y, shared_labels=shared)
                continue
            result = method.infer(module.net, x, coeffs, num_classes=module.num_classes, classify=classify,
                                  baselines=baselines, unshared_labels=not shared, signatures=signatures)
            tally = tally + score_inference(task, result.task, result.logits.argmax(1), y, shared_labels=shared)
        counts = torch.tensor([tally.correct, tally.total, tally.task_hits, tally.task_trials],
                              dtype=torch.float64, device=module.device)
        counts = trainer.strategy.reduce(counts, reduce_op="sum")
        return {"accuracy": float(counts[0] / counts[1]),
                "task_accuracy": float(counts[2] / counts[3]) if counts[3] > 0 and method is not None else None}

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


def summarize(per_task: list[dict[str, Any]], module: L.LightningModule) -> dict[str, Any]:
    """Means over the tasks, and the task-inference accuracy of impression and combination tasks apart
    (one-shot's linear score can only pick the latter where its α sits on the masks the gradient favours)."""
    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    kinds = {kind: [t["task_accuracy"] for task, t in enumerate(per_task) if t["task_accuracy"] is not None
                    and (module.table.slot_of(task) is None) == (kind == "combination")]
             for kind in ("impression", "combination")}
    return {"per_task": per_task, "accuracy": mean([t["accuracy"] for t in per_task]),
            "task_accuracy": mean([t["task_accuracy"] for t in per_task if t["task_accuracy"] is not None]),
            "task_accuracy_impressions": mean(kinds["impression"]),
            "task_accuracy_combinations": mean(kinds["combination"])}
