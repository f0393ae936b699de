"""TaskInferenceEvaluator: inferred-task-id accuracy after each task and on a checkpoint with `test`."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint

from impress_lightning.callbacks import FreezeImpressions, RetentionEvaluator, TaskInferenceEvaluator
from impress_lightning.data import TaskSequenceDataModule
from impress_lightning.inference import TaskInference, entropy_objective
from impress_lightning.module import ImpressLearnModule
from impress_lightning.nn import TopK


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny nets: thread start-up costs more than it saves on a shared machine
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_supsup_stream_infers_permuted_tasks_and_test_reruns_it_on_the_checkpoint(tmp_path):
    L.seed_everything(0)
    dm = TaskSequenceDataModule(dataset="digits", family="permute", num_tasks=3, batch_size=64, seed=0)
    module = ImpressLearnModule(backbone="lenet_300_100", num_tasks=3, num_classes=10, input_shape=dm.input_shape,
                                impression_source="supsup", num_impressions=0, mask_rule=TopK(0.3), impression_epochs=6,
                                mask_optimizer=lambda p: torch.optim.Adam(p, lr=0.01))
    methods = [TaskInference(strategy="oneshot", objective="entropy"), TaskInference(strategy="binary"),
               TaskInference(strategy="exhaustive", calibrate="always"), TaskInference(strategy="exhaustive"),
               TaskInference(strategy="exhaustive", verify_by="features")]
    evaluator = TaskInferenceEvaluator(methods=methods, batch_size=64, max_batches_per_task=3)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, save_on_train_epoch_end=True)
    trainer = L.Trainer(max_epochs=module.schedule.total_epochs, reload_dataloaders_every_n_epochs=1,
                        callbacks=[FreezeImpressions(False), RetentionEvaluator(plots=False), evaluator, checkpoints],
                        logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, dm)

    written = json.loads((tmp_path / "task_inference.json").read_text())
    assert sorted(written, key=int) == ["0", "1", "2"]  # one report after each task
    final = written["2"]
    assert final["labels"] == "shared" and final["tasks"] == 3
    retention = json.loads((tmp_path / "retention.json").read_text())["accuracy_matrix"][-1]
    assert final["methods"]["exhaustive-entropy-calibrated"]["calibrated"]
    assert not final["methods"]["exhaustive-entropy"]["calibrated"]  # the default: shared labels, raw scores
    for name in ("oneshot-entropy", "binary-entropy", "exhaustive-entropy-calibrated", "exhaustive-entropy",
                 "exhaustive-entropy-features"):
        summary = final["methods"][name]
        assert summary["task_accuracy"] == 1.0, name  # dedicated masks on permutations: clearly separable
        # with every task inferred right, inferred-id accuracy is the task-id-given accuracy (on 3 batches)
        assert summary["accuracy"] == pytest.approx(sum(retention) / 3, abs=0.08)

    # A calibrated method's baseline: the entropy the task table recorded when the task was learned, its mean
    # entropy on its own first probe_batches held-out batches.
    module.eval()
    with torch.no_grad():
        batches = list(dm.probe_loader(1))[: module.hparams.probe_batches]
        x = torch.cat([x for x, _ in batches])
        expected = float(entropy_objective(module(x, 1)[:, :10]))
    assert module.table.baseline_entropy[1].item() == pytest.approx(expected, rel=1e-5)
    assert sorted(evaluator._baselines) == [("entropy", t) for t in range(3)]
    assert [evaluator._baselines["entropy", t] for t in range(3)] == module.table.baseline_entropy.tolist()

    # verify_by='features': each task's signature is its mean first-layer features on its own held-out examples.
    assert sorted(evaluator._signatures) == [0, 1, 2]
    with torch.no_grad():
        held_out = torch.cat([x for x, _ in dm.probe_loader(2)])
        first = module.net.layers[0]
        own = F.relu(F.linear(held_out.flatten(1), first.weight * first.bank.masks(3)[2].view_as(first.weight)))
    torch.testing.assert_close(evaluator._signatures[2], own.double().mean(0))

    # `impress-lightning test` path: a fresh trainer on the checkpoint runs the same evaluation.
    fresh = ImpressLearnModule.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert int(fresh.tasks_learned) == 3
    again = TaskInferenceEvaluator(methods=methods, batch_size=64, max_batches_per_task=3)
    L.Trainer(callbacks=[again], logger=False, enable_progress_bar=False, default_root_dir=tmp_path / "test").test(
        fresh, dm)
    assert again.results["2"]["methods"] == final["methods"]


INFERENCE_CONFIG = """
trainer:
  callbacks+:
    - class_path: impress_lightning.callbacks.TaskInferenceEvaluator
      init_args:
        methods:
          - {strategy: oneshot, objective: superfluous}
          - {strategy: shortlist, objective: superfluous, shortlist_size: 2}
          - {strategy: exhaustive, objective: superfluous}
        batch_size: 32
        max_batches_per_task: 2
        seed: 3
        every_task: false
"""


@pytest.mark.slow
def test_superfluous_objective_through_the_cli_and_a_seeded_rerun_on_the_checkpoint(tmp_path):
    from test_cli import QUICKSTART, tiny_fit_args

    from impress_lightning.cli import main

    config = tmp_path / "inference.yaml"
    config.write_text(INFERENCE_CONFIG)
    main(tiny_fit_args(tmp_path, "--config", str(config), "--model.extra_outputs", "4"))
    run = tmp_path / "quickstart"
    fit_report = json.loads((run / "task_inference.json").read_text())["2"]
    assert fit_report["batches"] == {"size": 32, "shuffle": True, "seed": 3}
    methods = fit_report["methods"]
    assert sorted(methods) == ["exhaustive-superfluous", "oneshot-superfluous", "shortlist-superfluous-taylor-m2-near2"]
    for summary in methods.values():
        assert 0.0 <= summary["task_accuracy"] <= 1.0 and 0.0 <= summary["accuracy"] <= 1.0
    assert fit_report["task_given_accuracy"] > 0.25  # above chance (0.1) after the tiny fit; 14 head outputs

    # `test` on the checkpoint draws the same seeded batches: the same report, number for number.
    main(["test", "--config", QUICKSTART, "--config", str(config), "--trainer.logger.init_args.save_dir",
          str(tmp_path), "--trainer.enable_progress_bar", "false", "--data.init_args.num_tasks", "3",
          "--model.num_impressions", "2", "--model.extra_outputs", "4",
          "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    assert json.loads((run / "test" / "task_inference.json").read_text())["2"] == fit_report

    # Without extra outputs the objective is refused before anything trains.
    with pytest.raises(ValueError, match="extra_outputs"):
        main(tiny_fit_args(tmp_path / "none", "--config", str(config)))
    assert not (tmp_path / "none" / "quickstart" / "checkpoints").exists()


def test_evaluation_batches_are_a_seeded_shuffle_of_each_task():
    from types import SimpleNamespace

    dm = TaskSequenceDataModule(dataset="digits", family="permute", num_tasks=2, batch_size=64, seed=0)
    dm.setup("test")
    trainer = SimpleNamespace(datamodule=dm, world_size=1)

    def labels(evaluator: TaskInferenceEvaluator, task: int) -> list[torch.Tensor]:
        return [y for _, y in evaluator.task_loader(trainer, task)]

    ordered = torch.cat(labels(TaskInferenceEvaluator(batch_size=50, shuffle=False), 0))
    first = labels(TaskInferenceEvaluator(batch_size=50, seed=0), 0)
    again = labels(TaskInferenceEvaluator(batch_size=50), 0)
    assert len(first[0]) == 50 and all(torch.equal(a, b) for a, b in zip(first, again))  # a rerun: same batches
    shuffled = torch.cat(first)
    assert not torch.equal(shuffled, ordered) and torch.equal(shuffled.sort().values, ordered.sort().values)
    assert not torch.equal(torch.cat(labels(TaskInferenceEvaluator(batch_size=50, seed=1), 0)), shuffled)
    assert not torch.equal(torch.cat(labels(TaskInferenceEvaluator(batch_size=50), 1)), shuffled)  # per task
    with pytest.raises(ValueError, match="batch_size"):
        TaskInferenceEvaluator(batch_size=0)
