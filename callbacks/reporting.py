"""Send a run's retention results and its resolved config to every configured Lightning logger.

After each task, :class:`impress_lightning.callbacks.RetentionEvaluator` (rank zero) calls :func:`report_retention`, which gives

* every logger (W&B, TensorBoard, CSV, ...) the storage scalars ``storage/task_bytes``,
  ``storage/task_trainable_parameters`` and ``storage/total_bytes``, and the per-task curves (see
  :func:`task_curves`) with ``task`` in the same row: W&B plots those against ``task`` (``define_metric``);
* a :class:`~lightning.pytorch.loggers.WandbLogger` also the accuracy matrix and the per-task storage as
  ``wandb.Table`` (``retention/accuracy_matrix``, ``storage/tasks``) and the heatmaps as images
  (``retention/accuracy_matrix_plot``, and ``retention/alpha_plot`` once a combination task is trained);
* a :class:`~lightning.pytorch.loggers.TensorBoardLogger` the same images plus the matrix as a text table.

Everything is logged at the step of the task's ``retention/*`` scalars (the last batch's step), so W&B's
``trainer/global_step`` axis and CSV's ``step`` column stay in order.
:class:`LoggedSaveConfigCallback` sends the resolved LightningCLI config to the loggers as hyperparameters
(the W&B run config), besides writing ``config.yaml``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import lightning as L
import numpy as np
import yaml
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger

ACCURACY_TABLE_KEY = "retention/accuracy_matrix"
ACCURACY_PLOT_KEY = "retention/accuracy_matrix_plot"
ALPHA_PLOT_KEY = "retention/alpha_plot"
STORAGE_TABLE_KEY = "storage/tasks"
STORAGE_COLUMNS = ("task", "kind", "trainable_parameters", "stored_bytes", "bn_bytes", "seconds")


def _required(summary: Mapping[str, Any], field: str) -> Any:
    if field not in summary:
        raise ValueError(f"retention summary has no {field!r}: pass RetentionEvaluator.summary(pl_module)")
    return summary[field]


def accuracy_table(matrix: Sequence[Sequence[float | None]]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the accuracy matrix as a table.

    Row i is "after training task i": ``after_task``, then the accuracy on every task j (``None`` for a task
    not trained yet), then ``average``, the mean accuracy over the tasks seen by then (j <= i).
    """
    if not matrix:
        raise ValueError("accuracy_matrix is empty: report after at least one task has been evaluated")
    width = len(matrix[0])
    columns = ["after_task", *(f"task_{j}" for j in range(width)), "average"]
    rows = []
    for i, row in enumerate(matrix):
        if len(row) != width:
            raise ValueError(f"accuracy_matrix[{i}] has {len(row)} entries, expected {width} (one per task)")
        seen = [v for v in row[: i + 1] if v is not None]
        average = math.fsum(seen) / len(seen) if seen else None
        rows.append([i, *(None if v is None else float(v) for v in row), average])
    return columns, rows


def storage_table(tasks: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the per-task storage cost (one row per trained task; missing fields are None)."""
    return list(STORAGE_COLUMNS), [[task.get(column) for column in STORAGE_COLUMNS] for task in tasks]


def storage_scalars(tasks: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Scalars for the task just finished (the last entry) and the stream so far.

    ``storage/task_bytes`` and ``storage/task_trainable_parameters`` describe the last task;
    ``storage/total_bytes`` sums ``stored_bytes`` (masks and α, BN statistics excluded) over all tasks.
    """
    if not tasks:
        return {}
    for field in ("stored_bytes", "trainable_parameters"):
        if field not in tasks[-1]:
            raise ValueError(f"retention summary tasks[{len(tasks) - 1}] has no {field!r} (from task_storage)")
    return {"storage/task_bytes": float(tasks[-1]["stored_bytes"]),
            "storage/task_trainable_parameters": float(tasks[-1]["trainable_parameters"]),
            "storage/total_bytes": float(sum(task["stored_bytes"] for task in tasks))}


TASK_AXIS = "task"


def task_curves(summary: Mapping[str, Any]) -> dict[str, float]:
    """Scalars whose x-axis is the task just finished, ``i``: ``task`` = i, ``retention/acc_taskJJ`` = R[i][j]
    for every task j measured after task i (one curve per task: how it holds up as the stream goes on; a task
    ``RetentionEvaluator(old_tasks=N)`` skipped there has no point), and, where known,
    ``transfer/best_impression_accuracy`` (the best single impression on task i),
    ``transfer/gain_over_best_impression`` (task i's accuracy minus that) and ``transfer/fwt``."""
    row = _required(summary, "accuracy_matrix")[-1]
    done = len(summary["accuracy_matrix"]) - 1
    curves = {TASK_AXIS: float(done), **{f"retention/acc_task{j:02d}": float(row[j]) for j in range(done + 1)
                                         if row[j] is not None}}
    best = summary["tasks"][-1].get("best_impression_accuracy") if summary.get("tasks") else None
    if best is not None:
        curves["transfer/best_impression_accuracy"] = float(best)
        curves["transfer/gain_over_best_impression"] = float(row[done]) - float(best)
    if summary.get("fwt") is not None:
        curves["transfer/fwt"] = float(summary["fwt"])
    return curves


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table (TensorBoard's text plugin renders it); floats with 4 decimals, None blank."""
    def cell(value: Any) -> str:
        if value is None:
            return ""
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def retention_figures(summary: Mapping[str, Any], pl_module: L.LightningModule) -> dict[str, np.ndarray]:
    """The accuracy-matrix heatmap and, once a combination task is trained, the α heatmap, as RGB arrays."""
    from impress_lightning.plots import figure_accuracy_matrix, figure_alpha, figure_to_array

    matrix = _required(summary, "accuracy_matrix")
    kinds = [pl_module.schedule.kind_of_task(t) for t in range(len(matrix[0]))]
    images = {ACCURACY_PLOT_KEY: figure_to_array(figure_accuracy_matrix(matrix, kinds))}
    alphas = {t: pl_module.table.layer_summary(t, pl_module.bank_size) for t in range(len(matrix))
              if kinds[t] == "combination"}
    if alphas:
        images[ALPHA_PLOT_KEY] = figure_to_array(figure_alpha(alphas))
    return images


def _define_task_axis(logger: WandbLogger, keys: Sequence[str]) -> None:
    """Plot ``keys`` against ``task`` on W&B. Exact names, which take precedence over the ``*`` ->
    ``trainer/global_step`` rule Lightning defines; re-defining a key is harmless."""
    define = getattr(logger.experiment, "define_metric", None)
    if define is None:
        return
    define(TASK_AXIS)
    for key in keys:
        if key != TASK_AXIS:
            define(key, step_metric=TASK_AXIS)


def _to_wandb(logger: WandbLogger, summary: Mapping[str, Any], images: Mapping[str, np.ndarray], step: int) -> None:
    import wandb

    payload: dict[str, Any] = {}
    columns, rows = accuracy_table(summary["accuracy_matrix"])
    payload[ACCURACY_TABLE_KEY] = wandb.Table(columns=columns, data=rows)
    columns, rows = storage_table(summary["tasks"])
    payload[STORAGE_TABLE_KEY] = wandb.Table(columns=columns, data=rows)
    done = len(summary["accuracy_matrix"]) - 1
    for key, image in images.items():
        payload[key] = wandb.Image(image, caption=f"after task {done}")
    logger.log_metrics(payload, step=step)  # adds trainer/global_step, W&B's x-axis for every key


def _to_tensorboard(logger: TensorBoardLogger, summary: Mapping[str, Any], images: Mapping[str, np.ndarray],
                    step: int) -> None:
    writer = logger.experiment
    for key, image in images.items():
        writer.add_image(key, image, global_step=step, dataformats="HWC")
    writer.add_text(ACCURACY_TABLE_KEY, markdown_table(*accuracy_table(summary["accuracy_matrix"])), global_step=step)
    writer.add_text(STORAGE_TABLE_KEY, markdown_table(*storage_table(summary["tasks"])), global_step=step)


def report_retention(trainer: L.Trainer, pl_module: L.LightningModule, summary: Mapping[str, Any],
                     plots: bool = True) -> None:
    """Send the retention ``summary`` (``RetentionEvaluator.summary``) to every logger in ``trainer.loggers``.

    Call it on rank zero after each task; it does nothing on other ranks or without loggers. ``plots=False``
    skips the images (tables and scalars are still sent).
    """
    if not trainer.is_global_zero or not trainer.loggers:
        return
    _required(summary, "accuracy_matrix")
    tasks = _required(summary, "tasks")
    # Lightning logs a training epoch's epoch-end metrics (retention/*) at its last batch's step, one behind
    # global_step here (one optimiser step per batch): the same step keeps every logger's axis in order.
    step = max(trainer.global_step - 1, 0)
    scalars = {**storage_scalars(tasks), **task_curves(summary)}  # one row: each curve beside its task value
    wants_images = plots and any(isinstance(lg, (WandbLogger, TensorBoardLogger)) for lg in trainer.loggers)
    images = retention_figures(summary, pl_module) if wants_images else {}
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            _define_task_axis(logger, list(scalars))
        if scalars:
            logger.log_metrics(scalars, step=step)
        if isinstance(logger, WandbLogger):
            _to_wandb(logger, summary, images, step)
        elif isinstance(logger, TensorBoardLogger):
            _to_tensorboard(logger, summary, images, step)


def resolved_config(parser: Any, config: Any) -> dict[str, Any]:
    """The fully resolved LightningCLI ``config`` (defaults, links and every --config merged) as a plain dict."""
    return yaml.safe_load(parser.dump(config, skip_none=False)) or {}


def log_config(loggers: Sequence[Logger], config: Mapping[str, Any]) -> None:
    """Give ``config`` to every logger as hyperparameters (the run config on W&B, hparams.yaml for CSV)."""
    for logger in loggers:
        logger.log_hyperparams(dict(config))


class LoggedSaveConfigCallback(SaveConfigCallback):
    """Lightning's ``SaveConfigCallback`` (writes ``config.yaml`` into the log directory) that also sends the
    fully resolved config to every configured logger on rank zero, so a W&B run's config panel shows exactly
    what ran (``model.mask_rule``, ``trainer.accelerator``, ``data.init_args.*``, ...), nested as in the YAML
    and only once (Lightning's flat copy of the module's and datamodule's hyper-parameters is switched off).

    Pass it as ``LightningCLI(save_config_callback=LoggedSaveConfigCallback)``; it takes the same arguments
    as ``SaveConfigCallback`` (``save_config_kwargs``).
    """

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Runs on rank zero only (Lightning's contract), after ``config.yaml`` is written."""
        if trainer.loggers:
            log_config(trainer.loggers, resolved_config(self.parser, self.config))
            # The nested config already holds every model and data argument: without this Lightning would
            # add them again as flat top-level keys (``backbone``, ``num_tasks``, ...) right after setup.
            pl_module._log_hyperparams = False
            if trainer.datamodule is not None:
                trainer.datamodule._log_hyperparams = False
