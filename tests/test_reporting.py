"""Reporting to loggers: a W&B offline run's records, CSV and TensorBoard metric names, the table helpers.

The end-to-end tests run a 3-task stream (2 impressions, then 1 combination task) through the real CLI with
``configs/logger/*.yaml`` as the second ``--config``. CSV and TensorBoard are read from disk; for W&B, like
Lightning's own WandbLogger tests, ``wandb.init`` is replaced by a recording run and the test checks what
the logger sends it (history rows, tables, images, config).
"""

from __future__ import annotations

import csv
import functools
import inspect
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from lightning.pytorch.loggers import Logger, WandbLogger

from impress_lightning.callbacks import LoggedSaveConfigCallback, report_retention
from impress_lightning.callbacks.reporting import accuracy_table, markdown_table, storage_scalars, storage_table
from impress_lightning.cli import ImpressLightningCLI
from impress_lightning.data import TaskSequenceDataModule
from impress_lightning.module import ImpressLearnModule

LOGGER_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "logger"
# 3 tasks, 1 epoch each: tasks 0-1 learn impressions, task 2 learns α (so an α plot exists).
BASE_CONFIG = {
    "seed_everything": 0,
    "trainer": {"accelerator": "cpu", "devices": 1, "log_every_n_steps": 1, "enable_progress_bar": False,
                "enable_model_summary": False, "enable_checkpointing": False},
    "model": {"num_impressions": 2, "mask_rule": {"class_path": "impress_lightning.nn.TopK", "init_args": {"density": 0.3}}, "impression_epochs": 1, "combination_epochs": 1},
    "data": {"class_path": "impress_lightning.data.TaskSequenceDataModule",
             "init_args": {"dataset": "digits", "family": "rotate", "num_tasks": 3, "train_subset": 128,
                           "batch_size": 64}},
    "freeze_impressions": {"verbose": False},
}
# Keys every logger gets that are not metrics of the run.
BOOKKEEPING = {"epoch", "step", "trainer/global_step", "_step", "_runtime", "_timestamp"}


def run_stream(tmp_path: Path, logger_config: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Fit the 3-task stream through the CLI with ``configs/logger/<logger_config>``; return retention.json."""
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(BASE_CONFIG))
    monkeypatch.setattr(sys, "argv", ["impress-lightning"])  # LightningCLI reads args=, not pytest's argv
    cli = ImpressLightningCLI(
        ImpressLearnModule, TaskSequenceDataModule, subclass_mode_data=True, auto_configure_optimizers=False,
        save_config_callback=LoggedSaveConfigCallback, save_config_kwargs={"overwrite": True},
        args=["fit", "--config", str(base), "--config", str(LOGGER_CONFIGS / logger_config),
              "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")])
    if isinstance(cli.trainer.logger, WandbLogger):
        cli.trainer.logger.experiment.finish()  # end the run, as a CLI process does at exit
    summary = json.loads((Path(cli.trainer.log_dir) / "retention.json").read_text())
    summary["log_dir"] = cli.trainer.log_dir
    return summary


# ----- a W&B run that records what the logger sends (as Lightning's own WandbLogger tests mock wandb.init) -------
class RecordingRun:
    """Stands in for the ``wandb.Run`` that ``wandb.init`` returns: keeps every ``log`` call (the history
    rows), the summary W&B would show (the last value of every key) and the config updates."""

    def __init__(self, **init: Any) -> None:
        self.init, self.history, self.summary, self.config_values = init, [], {}, {}
        self.id, self.name, self.dir = "recorded", "recorded", init.get("dir")
        self.config = SimpleNamespace(update=lambda values, **kwargs: self.config_values.update(values))
        self.defined: dict[str, str | None] = {}  # define_metric: metric name -> its step metric

    def define_metric(self, name: str, step_metric: str | None = None, **kwargs: Any) -> None:
        self.defined[name] = step_metric

    def log(self, row: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        self.history.append(dict(row))
        self.summary.update(row)

    def finish(self) -> None:
        pass


def scalars(row: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in row.items() if isinstance(v, (int, float))}


def scalar_names(rows: list[dict[str, Any]]) -> set[str]:
    """Metric names in W&B history rows, without bookkeeping keys and without media (tables, images)."""
    return {key for row in rows for key in scalars(row) if key not in BOOKKEEPING}


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import wandb

    tmp_path = tmp_path_factory.mktemp("wandb")
    runs: list[RecordingRun] = []

    @functools.wraps(wandb.init)  # keeps wandb.init's signature: LightningCLI reads WandbLogger's kwargs from it
    def init(**kwargs: Any) -> RecordingRun:
        runs.append(RecordingRun(**kwargs))
        return runs[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setattr(wandb, "init", init)
        retention = run_stream(tmp_path, "wandb.yaml", mp)
    assert len(runs) == 1
    return {"retention": retention, "history": runs[0].history, "summary": runs[0].summary,
            "config": runs[0].config_values, "run": runs[0]}


# ----- W&B -----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_wandb_history_and_summary_hold_the_stream_metrics(wandb_run):
    history, summary, retention = wandb_run["history"], wandb_run["summary"], wandb_run["retention"]
    assert {row["task"] for row in history if "task" in row} == {0, 1, 2}
    averages = [row["retention/average_accuracy"] for row in history if "retention/average_accuracy" in row]
    assert len(averages) == 3
    assert averages[-1] == pytest.approx(retention["average_accuracy"], abs=1e-6)
    assert summary["retention/average_accuracy"] == pytest.approx(retention["average_accuracy"], abs=1e-6)
    assert summary["storage/task_bytes"] == retention["tasks"][-1]["stored_bytes"]
    assert summary["storage/total_bytes"] == sum(task["stored_bytes"] for task in retention["tasks"])
    steps = [row["trainer/global_step"] for row in history if "trainer/global_step" in row]
    assert steps == sorted(steps), "W&B's step axis (trainer/global_step) went backwards"
    # Each task's table arrives at the step of that task's retention/* scalars.
    table_steps = [row["trainer/global_step"] for row in history if "retention/accuracy_matrix" in row]
    metric_steps = [row["trainer/global_step"] for row in history if "retention/average_accuracy" in row]
    assert table_steps == metric_steps


@pytest.mark.slow
def test_wandb_tables_match_retention_json(wandb_run):
    import wandb

    history, retention = wandb_run["history"], wandb_run["retention"]
    tables = [row["retention/accuracy_matrix"] for row in history if "retention/accuracy_matrix" in row]
    assert len(tables) == 3 and all(isinstance(t, wandb.Table) for t in tables)
    latest = tables[-1]
    assert latest.columns == ["after_task", "task_0", "task_1", "task_2", "average"]
    for i, (table_row, row) in enumerate(zip(latest.data, retention["accuracy_matrix"], strict=True)):
        assert table_row[0] == i
        assert table_row[1:4] == pytest.approx(row)
        assert table_row[4] == pytest.approx(sum(row[: i + 1]) / (i + 1))
    storage = wandb_run["summary"]["storage/tasks"]
    stored = [dict(zip(storage.columns, values)) for values in storage.data]
    assert [s["kind"] for s in stored] == ["impression", "impression", "combination"]
    assert [s["stored_bytes"] for s in stored] == [t["stored_bytes"] for t in retention["tasks"]]
    assert [s["trainable_parameters"] for s in stored] == [t["trainable_parameters"] for t in retention["tasks"]]


@pytest.mark.slow
def test_wandb_images_are_rgb_figures(wandb_run):
    import wandb

    history = wandb_run["history"]
    matrix_plots = [row["retention/accuracy_matrix_plot"] for row in history if "retention/accuracy_matrix_plot" in row]
    alpha_plots = [row["retention/alpha_plot"] for row in history if "retention/alpha_plot" in row]
    assert len(matrix_plots) == 3  # one per task
    assert len(alpha_plots) == 1  # only task 2 learned α
    for image in matrix_plots + alpha_plots:
        assert isinstance(image, wandb.Image) and image.image.mode == "RGB" and min(image.image.size) > 100


@pytest.mark.slow
def test_wandb_config_is_the_resolved_cli_config(wandb_run):
    config = wandb_run["config"]
    assert config["model"]["mask_rule"]["init_args"]["density"] == 0.3  # from the experiment config
    assert config["trainer"]["logger"]["init_args"]["project"] == "impress-lightning"  # from configs/logger/wandb.yaml
    default = inspect.signature(ImpressLearnModule).parameters["alpha_regularization"].default
    assert config["model"]["alpha_regularization"] == default  # a default no config file names
    assert config["data"]["init_args"]["train_subset"] == 128


@pytest.mark.slow
def test_wandb_config_is_nested_only(wandb_run):
    # Lightning's flat copy of the module's and datamodule's hyper-parameters is switched off by the CLI.
    assert not {"backbone", "num_tasks", "dataset", "num_impressions"} & set(wandb_run["config"])
    assert {"model", "data", "trainer"} <= set(wandb_run["config"])


@pytest.mark.slow
def test_wandb_per_task_curves_use_task_as_their_axis(wandb_run):
    history, defined, retention = wandb_run["history"], wandb_run["run"].defined, wandb_run["retention"]
    curves = [row for row in history if "retention/acc_task00" in row]
    assert [row["task"] for row in curves] == [0, 1, 2]  # the axis value rides in the same row
    for i, row in enumerate(curves):  # row i: every seen task's accuracy after task i, as in retention.json
        assert [row.get(f"retention/acc_task{j:02d}") for j in range(3)] == pytest.approx(
            retention["accuracy_matrix"][i][: i + 1] + [None] * (2 - i))
    assert defined["retention/acc_task02"] == "task" and "task" in defined
    # Task 2 combines 2 impressions: its baseline is the best of them alone, as retention.json records.
    best = retention["tasks"][2]["best_impression_accuracy"]
    assert curves[2]["transfer/best_impression_accuracy"] == pytest.approx(best)
    assert curves[2]["transfer/gain_over_best_impression"] == pytest.approx(retention["accuracy_matrix"][2][2] - best)
    assert defined["transfer/best_impression_accuracy"] == "task"
    assert curves[2]["transfer/fwt"] == pytest.approx(retention["fwt"])
    # The stated reference: chance (1/10 classes); "before training task j": its best single impression.
    ahead = [retention["tasks"][j]["best_impression_accuracy"] for j in (1, 2)]
    assert retention["fwt"] == pytest.approx(sum(a - 0.1 for a in ahead) / 2)
    assert retention["tasks"][0]["best_impression_accuracy"] is None  # nothing stored before task 0


# ----- CSV and TensorBoard -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_csv_logger_gets_the_same_metric_names(wandb_run, tmp_path, monkeypatch):
    retention = run_stream(tmp_path, "csv.yaml", monkeypatch)
    log_dir = Path(retention["log_dir"])
    with open(log_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = set(rows[0]) - BOOKKEEPING
    assert names == scalar_names(wandb_run["history"])
    assert {"task", "retention/average_accuracy", "storage/task_bytes"} <= names
    steps = [int(row["step"]) for row in rows]
    assert steps == sorted(steps)
    assert {float(row["task"]) for row in rows if row["task"]} == {0.0, 1.0, 2.0}
    last_average = [row["retention/average_accuracy"] for row in rows if row["retention/average_accuracy"]][-1]
    assert float(last_average) == pytest.approx(retention["average_accuracy"], abs=1e-6)
    hparams = yaml.load((log_dir / "hparams.yaml").read_text(), Loader=yaml.FullLoader)  # holds tuples
    assert hparams["model"]["mask_rule"]["init_args"]["density"] == 0.3  # the resolved CLI config, via LoggedSaveConfigCallback


@pytest.mark.slow
def test_tensorboard_logger_gets_images_text_and_the_same_scalars(wandb_run, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="TensorBoardLogger needs the tensorboard package")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    retention = run_stream(tmp_path, "tensorboard.yaml", monkeypatch)
    events = EventAccumulator(retention["log_dir"], size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert set(tags["scalars"]) - BOOKKEEPING == scalar_names(wandb_run["history"])
    assert {"retention/accuracy_matrix_plot", "retention/alpha_plot"} <= set(tags["images"])
    assert len(events.Images("retention/accuracy_matrix_plot")) == 3
    assert {"retention/accuracy_matrix/text_summary", "storage/tasks/text_summary"} <= set(tags["tensors"])


# ----- the pieces ----------------------------------------------------------------------------------------------
def test_accuracy_table_averages_only_the_seen_tasks():
    columns, rows = accuracy_table([[0.9, None, None], [0.9, 0.5, None]])
    assert columns == ["after_task", "task_0", "task_1", "task_2", "average"]
    assert rows[0] == [0, 0.9, None, None, pytest.approx(0.9)]
    assert rows[1] == [1, 0.9, 0.5, None, pytest.approx(0.7)]
    with pytest.raises(ValueError, match=r"accuracy_matrix\[1\] has 2 entries"):
        accuracy_table([[0.9, None, None], [0.9, 0.5]])
    with pytest.raises(ValueError, match="accuracy_matrix is empty"):
        accuracy_table([])


def test_storage_scalars_describe_the_last_task_and_the_total():
    tasks = [{"task": 0, "kind": "impression", "stored_bytes": 100, "trainable_parameters": 800},
             {"task": 1, "kind": "combination", "stored_bytes": 24, "trainable_parameters": 6}]
    assert storage_scalars(tasks) == {"storage/task_bytes": 24.0, "storage/task_trainable_parameters": 6.0,
                                      "storage/total_bytes": 124.0}
    columns, rows = storage_table(tasks)
    assert rows[1][columns.index("kind")] == "combination" and rows[1][columns.index("seconds")] is None
    with pytest.raises(ValueError, match="stored_bytes"):
        storage_scalars([{"task": 0, "trainable_parameters": 1}])


def test_markdown_table_formats_floats_and_blanks():
    text = markdown_table(["a", "b"], [[1, 0.123456], [2, None]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | 0.1235 |", "| 2 |  |"]


class RecordingLogger(Logger):
    """A logger that is neither W&B nor TensorBoard: it should get the scalars only."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[dict[str, float], int | None]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.logged.append((dict(metrics), step))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


def fake_trainer(logger: Logger, rank_zero: bool = True) -> SimpleNamespace:
    return SimpleNamespace(is_global_zero=rank_zero, loggers=[logger], global_step=8)


SUMMARY = {"accuracy_matrix": [[0.8, None]], "tasks": [{"task": 0, "stored_bytes": 10, "trainable_parameters": 80}]}


def test_other_loggers_get_the_storage_scalars_at_the_epoch_metrics_step():
    logger = RecordingLogger()
    report_retention(fake_trainer(logger), pl_module=None, summary=SUMMARY)
    assert logger.logged == [({"storage/task_bytes": 10.0, "storage/task_trainable_parameters": 80.0,
                               "storage/total_bytes": 10.0, "task": 0.0, "retention/acc_task00": 0.8}, 7)]


def test_report_is_silent_off_rank_zero_and_rejects_a_bad_summary():
    logger = RecordingLogger()
    report_retention(fake_trainer(logger, rank_zero=False), pl_module=None, summary=SUMMARY)
    assert logger.logged == []
    with pytest.raises(ValueError, match="'tasks'"):
        report_retention(fake_trainer(logger), pl_module=None, summary={"accuracy_matrix": [[0.8]]})
    assert logger.logged == []  # nothing half-sent before the error
