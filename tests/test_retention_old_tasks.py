"""RetentionEvaluator(old_tasks=N): a bounded number of old tasks re-evaluated per task, the gaps and metrics."""

from __future__ import annotations

import csv
import json

import lightning as L
from lightning.pytorch.loggers import CSVLogger
import pytest
import torch

from impress_lightning import ImpressLearnModule, PerLayer, RetentionEvaluator, TopK
from impress_lightning.metrics import latest_measured, summarise, validate_matrix
from impress_lightning.plots import plot_accuracy_matrix
from streams import TensorStream, linear_task


def test_old_tasks_picks_the_least_recently_measured_and_the_last_task_evaluates_all() -> None:
    evaluator = RetentionEvaluator(old_tasks=2)
    picked = []
    for task in range(8):
        tasks = evaluator.tasks_to_evaluate(task, num_tasks=8)
        picked.append(tasks)
        evaluator.matrix.append([0.5 if j in tasks else None for j in range(8)])
    assert picked[:3] == [[0], [0, 1], [0, 1, 2]]  # fewer old tasks than the budget: all of them
    assert picked[3] == [0, 1, 3]  # 0, 1 and 2 last measured after task 2: ties go to the lower id
    assert picked[4] == [0, 2, 4]  # then the one left out (2), and 0 among the three measured after task 3
    assert picked[5] == [1, 3, 5]
    assert picked[7] == list(range(8))  # the stream's last task fills the final row
    assert all(len(tasks) <= 3 for tasks in picked[:7])


def test_old_tasks_none_evaluates_every_seen_task_and_negative_is_refused() -> None:
    assert RetentionEvaluator().tasks_to_evaluate(5, num_tasks=9) == list(range(6))
    with pytest.raises(ValueError, match="old_tasks"):
        RetentionEvaluator(old_tasks=-1)


def test_latest_measured_fills_gaps_below_the_diagonal_from_earlier_rows() -> None:
    R = [[0.9, None, None], [None, 0.8, None], [0.7, None, 0.6]]
    with pytest.raises(ValueError, match="R\\[1\\]\\[0\\] is None"):
        validate_matrix(R)
    assert latest_measured(R) == [[0.9, None, None], [0.9, 0.8, None], [0.7, 0.8, 0.6]]
    with pytest.raises(ValueError, match="R\\[1\\]\\[1\\] is None"):  # the diagonal is always measured
        latest_measured([[0.9, None], [0.9, None]])
    stats = summarise(latest_measured(R))
    assert stats["average_accuracy"] == pytest.approx(0.7)
    assert stats["bwt"] == pytest.approx(((0.7 - 0.9) + (0.8 - 0.8)) / 2)


def test_a_stream_with_old_tasks_leaves_gaps_and_ends_with_a_full_row(tmp_path) -> None:
    w = torch.randn(16, generator=torch.Generator().manual_seed(1))
    tasks = [linear_task(w, t % 2 == 1, t, n_train=128, n_test=64) for t in range(5)]
    L.seed_everything(0)
    module = ImpressLearnModule(num_tasks=5, num_classes=2, input_shape=(1, 4, 4), num_impressions=2,
                                mask_rule=TopK(0.5), combination=PerLayer(), impression_epochs=1,
                                combination_epochs=1)
    evaluator = RetentionEvaluator(output_dir=str(tmp_path), plots=False, old_tasks=1)
    logger = CSVLogger(tmp_path, name="csv", version="")  # the per-task curves skip the cells left unmeasured
    trainer = L.Trainer(max_epochs=module.schedule.total_epochs, reload_dataloaders_every_n_epochs=1, logger=logger,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[evaluator], default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(module, datamodule=TensorStream(tasks))
    summary = json.loads((tmp_path / "retention.json").read_text())
    R = summary["accuracy_matrix"]
    # forward transfer reads the best single impression ahead of each task, whatever the gaps below
    best = [t["best_impression_accuracy"] for t in summary["tasks"][1:]]
    assert summary["fwt"] == pytest.approx(sum(b - 0.5 for b in best) / len(best))
    measured = [[j for j, v in enumerate(row) if v is not None] for row in R]
    assert measured == [[0], [0, 1], [0, 2], [1, 3], [0, 1, 2, 3, 4]]
    with open(tmp_path / "csv" / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("task")]
    logged = [[j for j in range(5) if rows[i].get(f"retention/acc_task{j:02d}")] for i in range(5)]
    assert [int(float(r["task"])) for r in rows] == list(range(5)) and logged == measured
    # zero forgetting: every re-measurement of a task equals its first one, so the filled metrics are exact
    for j in range(5):
        assert len({R[i][j] for i in range(j, 5) if R[i][j] is not None}) == 1


def test_the_heatmap_draws_a_gapped_matrix(tmp_path) -> None:
    path = plot_accuracy_matrix([[0.9, None, None], [None, 0.8, None]], None, tmp_path / "gaps.png")
    assert path.stat().st_size > 0
