"""RetentionEvaluator: after each task, evaluate every seen task with its own task id."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Literal

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from impress_lightning.atomic import atomic_write
from impress_lightning.callbacks.baseline import best_single_impression
from impress_lightning.callbacks.closing import closing_table, task_line
from impress_lightning.callbacks.progress import say
from impress_lightning.callbacks.reporting import report_retention
from impress_lightning.callbacks.requirements import check_stream_datamodule
from impress_lightning.metrics import forward_transfer, latest_measured, summarise
from impress_lightning.stages import to_device


def run_directory(trainer: L.Trainer, output_dir: str | None) -> Path:
    """Where run outputs go: ``output_dir`` or the trainer's log directory.

    Safe to call on rank zero alone: it resolves the directory the way ``trainer.log_dir`` does but without that
    property's broadcast, a collective that deadlocks DDP when only the writing rank asks (measured: ddp_spawn
    on 2 CPU processes hung at the first retention.json).
    """
    if output_dir:
        return Path(output_dir)
    logger = trainer.logger
    if logger is None:
        return Path(trainer.default_root_dir)
    dirpath = logger.log_dir if isinstance(logger, (CSVLogger, TensorBoardLogger)) else logger.save_dir
    return Path(dirpath or trainer.default_root_dir)


def rank_shard(loader: DataLoader, trainer: L.Trainer) -> DataLoader:
    """This rank's strided share of ``loader``'s examples (no padding, so summed counts are exact)."""
    if trainer.world_size == 1:
        return loader
    subset = Subset(loader.dataset, range(trainer.global_rank, len(loader.dataset), trainer.world_size))
    return DataLoader(subset, batch_size=loader.batch_size, collate_fn=loader.collate_fn,
                      num_workers=loader.num_workers)


@torch.no_grad()
def evaluate_task(trainer: L.Trainer, pl_module: L.LightningModule, task: int, split: str,
                  predict: Callable[[Tensor], Tensor] | None = None) -> float:
    """Accuracy on ``task``'s ``split`` loader of ``predict`` (labels of a batch; default the finished task's own
    weights, ``pl_module.predict_task``), summed exactly over all ranks."""
    predict = predict or (lambda x: pl_module.predict_task(x, task))
    counts = torch.zeros(2, device=pl_module.device, dtype=torch.float64)
    for batch in rank_shard(trainer.datamodule.eval_dataloader(task, split), trainer):
        x, y = to_device(batch, trainer)
        counts[0] += (predict(x) == y).sum()
        counts[1] += y.numel()
    counts = trainer.strategy.reduce(counts, reduce_op="sum")
    return float(counts[0] / counts[1])


class RetentionEvaluator(L.Callback):
    """Fills the accuracy matrix R (R[i][j] = accuracy on task j after training task i) after each task and
    writes ``retention.json`` and ``retention.png`` (and ``alpha.png``) into the run directory; prints a line
    per task and, at the end of fit, a closing table through the progress bar (so they stay on screen).

    Runs on the module's device (the GPU when there is one). The matrix is callback state, so it is saved in
    checkpoints and a resumed run continues it.

    Args:
        split: "test" or "val" examples of each task.
        output_dir: where to write the files; default the trainer's log directory.
        plots: also write the PNG figures.
        baseline: evaluate every impression stored before a task alone on that task (one evaluation per
            stored impression and task): the best single impression's accuracy, the reference a combination
            task has to beat, and forward transfer.
        baseline_slots: evaluate only the most recently stored this many impressions for the baseline (None:
            all). A SupSup stream stores one impression per task, so the full baseline costs T evaluations
            after task T (quadratic in the stream); with a number it stays flat, and the baseline is the best
            of those impressions (``best_impression_probed`` in retention.json says how many were evaluated).
        old_tasks: how many earlier tasks to re-evaluate after each task, those measured longest ago first;
            None re-evaluates all of them (T evaluations after task T: quadratic in a long stream). With a
            number, the cost per task stays flat; the cells skipped are None in the matrix, the metrics read
            each task's latest measurement, and the stream's last task always evaluates every task.
    """

    def __init__(self, split: Literal["test", "val"] = "test", output_dir: str | None = None, plots: bool = True,
                 baseline: bool = True, old_tasks: int | None = None, baseline_slots: int | None = None) -> None:
        if old_tasks is not None and old_tasks < 0:
            raise ValueError(f"RetentionEvaluator.old_tasks={old_tasks} must be >= 0 or null (re-evaluate all)")
        if baseline_slots is not None and baseline_slots < 1:
            raise ValueError(f"RetentionEvaluator.baseline_slots={baseline_slots} must be >= 1 or null (all "
                             "stored impressions); to skip the baseline set baseline: false")
        self.split, self.output_dir, self.plots, self.baseline = split, output_dir, plots, baseline
        self.baseline_slots = baseline_slots
        self.old_tasks = old_tasks
        self.matrix: list[list[float | None]] = []
        self.task_seconds: list[float] = []
        self.best_impression: list[dict[str, float | int] | None] = []
        self._task_started: float | None = None
        self._fit_started: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"matrix": self.matrix, "task_seconds": self.task_seconds, "best_impression": self.best_impression}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.matrix = [list(row) for row in state_dict["matrix"]]
        self.task_seconds = list(state_dict["task_seconds"])
        # Checkpoints written before the baseline existed have none: those tasks show no baseline.
        self.best_impression = list(state_dict.get("best_impression", [None] * len(self.matrix)))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            check_stream_datamodule(trainer, pl_module)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_started = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.matrix and trainer.is_global_zero:
            wall = time.perf_counter() - (self._fit_started or time.perf_counter())
            say(trainer, closing_table(self.summary(pl_module), wall))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._task_started is None:
            self._task_started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stage = pl_module.current_stage
        if trainer.current_epoch != stage.last_epoch or not stage.completes_task or trainer.sanity_checking:
            return
        seconds = time.perf_counter() - (self._task_started or time.perf_counter())
        self._task_started = None
        was_training = pl_module.training
        pl_module.eval()
        tasks = self.tasks_to_evaluate(stage.task, pl_module.num_tasks)
        row: list[float | None] = [None] * pl_module.num_tasks
        for j in tasks:
            row[j] = evaluate_task(trainer, pl_module, j, self.split)
        best = (best_single_impression(pl_module, stage.task,
                                       lambda predict: evaluate_task(trainer, pl_module, stage.task, self.split, predict),
                                       self.baseline_slots)
                if self.baseline else None)
        pl_module.train(was_training)
        self.matrix = self.matrix[: stage.task] + [row]
        self.task_seconds = self.task_seconds[: stage.task] + [seconds]
        self.best_impression = (self.best_impression + [None] * stage.task)[: stage.task] + [best]
        summary = self.summary(pl_module)
        metrics = {"retention/average_accuracy": summary["average_accuracy"], "retention/bwt": summary["bwt"],
                   "retention/forgetting": summary["forgetting"], "retention/task_accuracy": row[stage.task]}
        # Every rank holds the same exactly-reduced values: log them once.
        pl_module.log_dict({k: float(v) for k, v in metrics.items()}, on_epoch=True, rank_zero_only=True)
        say(trainer, task_line(summary))
        if trainer.is_global_zero:
            self.write(trainer, pl_module, summary)

    def tasks_to_evaluate(self, task: int, num_tasks: int) -> list[int]:
        """The tasks evaluated after ``task``: itself and up to ``old_tasks`` earlier ones, least recently
        measured first (ties: lower id). Derived from the matrix alone, so a resumed run picks the same."""
        if self.old_tasks is None or task == num_tasks - 1 or task <= self.old_tasks:
            return list(range(task + 1))
        # Row j always measured task j, so each scan ends by then.
        last_measured = [next(i for i in range(task - 1, j - 1, -1) if self.matrix[i][j] is not None)
                         for j in range(task)]
        stale = sorted(range(task), key=lambda j: (last_measured[j], j))[: self.old_tasks]
        return sorted(stale) + [task]

    def summary(self, pl_module: L.LightningModule) -> dict[str, Any]:
        """The retention.json content for the rows filled so far."""
        seen = len(self.matrix)
        # One gap-filled copy serves both: filling reads only earlier rows of the same column, so trimming the
        # unseen columns after it is the same as before it. (Everything here reads all T x T cells after
        # every task: done once, not once per metric.)
        latest = latest_measured(self.matrix)
        stats = summarise([row[:seen] for row in latest])
        schedule = pl_module.schedule
        tasks = [{"task": t, "kind": schedule.kind_of_task(t), "seconds": self.task_seconds[t],
                  **pl_module.task_storage(t), **pl_module.placement(t), **_baseline_fields(self.best_impression, t)}
                 for t in range(seen)]
        return {"accuracy_matrix": self.matrix, "average_accuracy": stats["average_accuracy"], "bwt": stats["bwt"],
                "forgetting": stats["forgetting"], **self.transfer(pl_module, latest), "tasks": tasks,
                "split": self.split,
                "impression_source": pl_module.source, "num_impressions": pl_module.bank_size,
                "total_stored_bytes": sum(task["stored_bytes"] for task in tasks)}

    def transfer(self, pl_module: L.LightningModule, latest: list[list[float | None]]) -> dict[str, Any]:
        """Forward transfer (``metrics.forward_transfer``): "before training task j" is the best single
        impression's accuracy on j, the reference is chance, 1/num_classes (what a model that never saw task
        j scores in expectation). None until a task with stored impressions before it is done. ``latest``:
        ``metrics.latest_measured`` of the matrix (with old_tasks, unevaluated old cells read their latest
        value)."""
        ahead = [list(row) for row in latest]
        for j, best in enumerate(self.best_impression[: len(ahead)]):
            if j > 0 and best is not None:
                ahead[j - 1][j] = best["accuracy"]
        chance = 1.0 / pl_module.num_classes
        fwt = forward_transfer(ahead, [chance] * pl_module.num_tasks) if ahead else None
        return {"fwt": fwt, "fwt_reference": f"chance (1/num_classes = {chance:.4f}); before training task j: the "
                "best single impression's accuracy on j"}

    def write(self, trainer: L.Trainer, pl_module: L.LightningModule, summary: dict[str, Any]) -> None:
        out = run_directory(trainer, self.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "retention.json", json.dumps(summary, indent=2))
        report_retention(trainer, pl_module, summary, plots=self.plots)  # tables, figures, scalars to the loggers
        if not self.plots:
            return
        from impress_lightning.plots import plot_accuracy_matrix, plot_alpha

        kinds = [pl_module.schedule.kind_of_task(t) for t in range(pl_module.num_tasks)]
        plot_accuracy_matrix(self.matrix, kinds, out / "retention.png")
        alphas = {t: pl_module.table.layer_summary(t, pl_module.bank_size).cpu().numpy()
                  for t in range(len(self.matrix)) if kinds[t] == "combination"}
        if alphas:
            plot_alpha(alphas, out / "alpha.png")


def _baseline_fields(best_impression: list[dict[str, float | int] | None], task: int) -> dict[str, Any]:
    best = best_impression[task] if task < len(best_impression) else None
    return {"best_impression_accuracy": None if best is None else best["accuracy"],
            "best_impression_slot": None if best is None else best["slot"],
            # None too for tasks measured before the count was recorded (they evaluated every stored one).
            "best_impression_probed": None if best is None else best.get("probed")}
