"""The terminal view of a task stream: task-aware bars, per-task lines through the bar, the closing table."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

from impress_lightning import EmbeddedDigits, ImpressLearnModule
from impress_lightning.callbacks import FreezeImpressions, RetentionEvaluator
from impress_lightning.callbacks.closing import closing_table, task_line
from impress_lightning.callbacks.progress import TaskRichProgressBar, TaskTQDMProgressBar
from impress_lightning.nn import TopK


def fit_with_bar(root: Path, bar_class: type, monkeypatch: pytest.MonkeyPatch,
                 bar: L.Callback | None = None) -> tuple[L.Trainer, list[str], list[str]]:
    """Fit 3 digit tasks (2 impressions, 1 combination of 2 epochs) with Lightning's default bar (or ``bar``);
    record every training-bar description and every line printed through ``bar_class.print``."""
    descriptions, printed = [], []
    original = bar_class.print
    monkeypatch.setattr(bar_class, "print", lambda self, *a, **k: (printed.append(" ".join(map(str, a))),
                                                                    original(self, *a, **k)))
    if bar_class is TaskRichProgressBar:
        describe = TaskRichProgressBar._get_train_description
        monkeypatch.setattr(bar_class, "_get_train_description",
                            lambda self, epoch: descriptions.append(describe(self, epoch)) or descriptions[-1])
    model = ImpressLearnModule(num_tasks=3, num_classes=10, input_shape=(1, 8, 8), num_impressions=2,
                               mask_rule=TopK(0.3), impression_epochs=1, combination_epochs=2,
                               mask_optimizer=functools.partial(torch.optim.Adam, lr=0.01))
    data = EmbeddedDigits(num_tasks=3, batch_size=64, train_subset=64, val_fraction=0.0)
    trainer = L.Trainer(accelerator="cpu", max_epochs=model.schedule.total_epochs, logger=False,
                        reload_dataloaders_every_n_epochs=1, enable_model_summary=False, default_root_dir=root,
                        callbacks=[FreezeImpressions(verbose=False), RetentionEvaluator(output_dir=str(root), plots=False),
                                   *([bar] if bar else [])])
    trainer.fit(model, datamodule=data)
    return trainer, descriptions, printed


def test_the_default_rich_bar_becomes_task_aware_and_keeps_the_task_lines(tmp_path, monkeypatch, capsys):
    trainer, descriptions, printed = fit_with_bar(tmp_path, TaskRichProgressBar, monkeypatch)
    assert type(trainer.progress_bar_callback) is TaskRichProgressBar
    assert "will override existing callbacks" not in capsys.readouterr().err  # swapped, not announced
    shown = [d for i, d in enumerate(descriptions) if i == 0 or d != descriptions[i - 1]]
    assert shown == ["task 0 (1/3) impression · epoch 1/1", "task 1 (2/3) impression · epoch 1/1",
                                "task 2 (3/3) combination · epoch 1/2", "task 2 (3/3) combination · epoch 2/2"]
    done = [line for line in printed if " done: acc " in line]
    assert [line.split(" done")[0] for line in done] == [
        "[impress] task 0 (1/3, impression)", "[impress] task 1 (2/3, impression)", "[impress] task 2 (3/3, combination)"]
    assert "vs best single impression" in done[2]
    assert printed[-1].splitlines()[1].startswith("impress-lightning: 3 of 3 task(s) learned")  # closing table last
    assert "task" not in trainer.progress_bar_callback.get_metrics(trainer, trainer.lightning_module)


def test_tqdm_bar_is_swapped_too_and_a_users_own_bar_is_kept(tmp_path, monkeypatch):
    trainer, _, printed = fit_with_bar(tmp_path / "tqdm", TaskTQDMProgressBar, monkeypatch, bar=TQDMProgressBar())
    assert type(trainer.progress_bar_callback) is TaskTQDMProgressBar
    assert sum(" done: acc " in line for line in printed) == 3

    class MyBar(RichProgressBar):
        pass

    trainer, _, _ = fit_with_bar(tmp_path / "own", TaskRichProgressBar, monkeypatch, bar=MyBar())
    assert type(trainer.progress_bar_callback) is MyBar


SUMMARY = {"accuracy_matrix": [[0.9, None], [0.9, 0.5]], "average_accuracy": 0.7, "bwt": 0.0, "forgetting": 0.0,
           "fwt": 0.3, "split": "test", "total_stored_bytes": 7000,
           "tasks": [{"task": 0, "kind": "impression", "stored_bytes": 6000, "seconds": 1.0,
                      "best_impression_accuracy": None, "best_impression_slot": None},
                     {"task": 1, "kind": "combination", "stored_bytes": 1000, "seconds": 2.0,
                      "best_impression_accuracy": 0.4, "best_impression_slot": 0}]}


def test_task_line_and_closing_table_show_the_numbers_of_the_summary():
    assert task_line(SUMMARY) == ("[impress] task 1 (2/2, combination) done: acc 0.5000 vs best single impression "
                                  "0.4000 (slot 0); avg over seen 0.7000, BWT +0.0000, forgetting 0.0000")
    lines = closing_table(SUMMARY, wall_seconds=12.5).splitlines()
    rows = [line.split() for line in lines if line.strip()[:1].isdigit()]
    assert rows == [["0", "impression", "0.9000", "6,000"], ["1", "combination", "0.5000", "0.4000", "(slot", "0)",
                                                             "1,000"]]
    assert lines[-2].split() == ["average", "accuracy", "0.7000", "BWT", "+0.0000", "forgetting", "0.0000", "FWT",
                                 "+0.3000"]
    assert lines[-1].split() == ["total", "stored", "7,000", "B", "task", "time", "3.0", "s", "wall", "time", "12.5",
                                 "s"]


def test_throttle_lets_a_bar_redraw_at_most_its_rate_and_always_on_the_last_batch(monkeypatch):
    from impress_lightning.callbacks import progress

    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    throttle = progress._Throttle(per_second=10)
    drawn = []
    for batch_idx in range(10):  # ten batches 0.03 s apart; the epoch has 10
        drawn.append(throttle.due(batch_idx, total=10))
        clock[0] += 0.03
    # the first, then every 0.1 s (4 batches of 0.03 s), and the last batch although only 0.06 s passed
    assert drawn == [True, False, False, False, True, False, False, False, True, True]
    assert progress._Throttle(per_second=0).due(0, None)  # a rate of 0 never holds a redraw back


def test_the_swapped_default_rich_bar_redraws_at_most_ten_times_a_second():
    from impress_lightning.callbacks.progress import REDRAWS_PER_SECOND, task_progress_bar

    assert RichProgressBar().refresh_rate == 100  # Lightning's default, which held the GIL for half a LeNet fit
    swapped = task_progress_bar(RichProgressBar())
    assert type(swapped) is TaskRichProgressBar and swapped.refresh_rate == REDRAWS_PER_SECOND == 10
    assert task_progress_bar(RichProgressBar(refresh_rate=2)).refresh_rate == 2  # a slower rate is kept
