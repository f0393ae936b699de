"""Per-task checkpoints and resuming: a run killed mid-task ends exactly where an uninterrupted one does."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from impress_lightning.callbacks import FreezeImpressions, RetentionEvaluator, TaskCheckpoint
from impress_lightning.cli import main
from impress_lightning.data import EmbeddedDigits
from impress_lightning.module import ImpressLearnModule
from impress_lightning.nn import TopK

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
SCRIPTS = ROOT / "tests" / "scripts"
# 4 tasks, K=2: epoch 0 = task 0, 1 = task 1, 2-3 = task 2, 4-5 = task 3 (impression 1 epoch, combination 2).
PAUSE_EPOCH, PAUSE_BATCH = 3, 1  # inside the 2nd epoch of task 2: its 1st epoch is already checkpointed
KINDS = ["impression", "impression", "combination", "combination"]


def stream_args(save_dir: Path, *extra: str) -> list[str]:
    """The quickstart shrunk to a 4-task stream that runs in seconds."""
    return ["fit", "--config", QUICKSTART, "--trainer.logger.init_args.save_dir", str(save_dir),
            "--data.init_args.num_tasks", "4", "--model.num_impressions", "2",
            "--data.init_args.train_subset", "128", "--data.init_args.batch_size", "32",
            "--data.init_args.num_workers", "0",
            "--model.impression_epochs", "1", "--model.combination_epochs", "2", "--retention.plots", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *extra]


def cli_env() -> dict[str, str]:
    # One thread per process: the runs share 2 cores, and every run computes with the same thread count.
    path = os.pathsep.join(p for p in (str(SCRIPTS), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def start_cli(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "impress_lightning", *args], cwd=ROOT, env=cli_env(),
                                stdout=out, stderr=subprocess.STDOUT)


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "impress_lightning", *args], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=300)


def wait_for(marker: Path, process: subprocess.Popen, log: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended (status {process.returncode}) before pausing:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail("the run did not reach the pause point in time")
        time.sleep(0.05)


def files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def task_files(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("task*.ckpt"))


@pytest.mark.slow
@pytest.mark.parametrize("grouping", [(), ("--data.init_args.batches_per_step", "2")],
                         ids=["one_batch_per_step", "killed_run_grouped"])
def test_a_run_killed_mid_task_resumes_to_the_same_accuracy_matrix(tmp_path: Path, grouping: tuple[str, ...]) -> None:
    """The killed run B may run 2 batches per Lightning step (``grouping``): killed inside a group's epoch and
    resumed, it must still end bit-identical to the uninterrupted run A of one batch per step."""
    pause = {"class_path": "pause_at.PauseAt",
             "init_args": {"epoch": PAUSE_EPOCH, "batch": PAUSE_BATCH, "marker": str(tmp_path / "paused")}}
    full = start_cli(stream_args(tmp_path / "a"), tmp_path / "a.log")
    killed = start_cli(stream_args(tmp_path / "b", *grouping, f"--trainer.callbacks+={json.dumps(pause)}"),
                       tmp_path / "b.log")
    try:
        check_kill_resume_and_refusal(tmp_path, full, killed, grouping)
    finally:  # never leave a run behind when an assertion fails
        for process in (full, killed):
            if process.poll() is None:
                process.kill()
                process.wait()


def check_kill_resume_and_refusal(tmp_path: Path, full: subprocess.Popen, killed: subprocess.Popen,
                                  b_args: tuple[str, ...] = ()) -> None:
    wait_for(tmp_path / "paused", killed, tmp_path / "b.log")
    run = tmp_path / "b" / "quickstart"
    # Paused inside task 2: tasks 0 and 1 have their checkpoints, last.ckpt holds task 2's first epoch.
    assert [name.split("-acc")[0] for name in task_files(run)] == ["task00-impression", "task01-impression"]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == PAUSE_EPOCH - 1
    before = files(run)
    second = run_cli(stream_args(tmp_path / "b", *b_args, "--ckpt_path", "last"))  # B is alive: its directory is taken
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert f"run directory {run} is in use by another live run (pid {killed.pid} " in second.stderr.splitlines()[-1]
    assert files(run) == before
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert len(json.loads((run / "retention.json").read_text())["accuracy_matrix"]) == 2

    before = files(run)
    refused = run_cli(stream_args(tmp_path / "b", *b_args))  # a fresh fit on top of the killed run
    last_line = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert last_line.startswith(f"error: run directory {run} already holds") and "--ckpt_path last" in last_line
    assert files(run) == before
    # The killed B left its lock file, without a live holder: the next run took it over.
    assert f"took over the stale lock of a run that is gone ({{'pid': {killed.pid}," in refused.stdout + refused.stderr

    resumed = run_cli(stream_args(tmp_path / "b", *b_args, "--ckpt_path", "last"))
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    assert f"Restoring states from the checkpoint path at {run / 'checkpoints' / 'last.ckpt'}" in output
    # the per-task lines read "[impress] task <id> (<k>/<T>, <kind>) done: ..."
    assert not re.search(r"task 1 \(\d+/\d+, impression\) done", output)
    assert re.search(r"task 2 \(\d+/\d+, combination\) done", output)
    assert full.wait(timeout=300) == 0, (tmp_path / "a.log").read_text()[-3000:]

    reference = tmp_path / "a" / "quickstart"
    expected = json.loads((reference / "retention.json").read_text())["accuracy_matrix"]
    assert json.loads((run / "retention.json").read_text())["accuracy_matrix"] == expected  # bit-equal floats
    assert task_files(run) == task_files(reference)
    assert [name.split("-acc")[0] for name in task_files(run)] == [f"task{t:02d}-{k}" for t, k in enumerate(KINDS)]
    weights = [torch.load(r / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"] for r in (run, reference)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_resume_from_last_without_a_last_checkpoint_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "quickstart"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "task00-impression-acc0.5000.ckpt").write_bytes(b"kept")
    (run / "retention.json").write_text("{}")
    before = files(run)
    with pytest.raises(ValueError) as error:  # Lightning alone would warn and train from scratch over it
        main(stream_args(tmp_path, "--ckpt_path", "last"))
    message = str(error.value)
    assert message.startswith("--ckpt_path last but") and "holds no last*.ckpt" in message
    assert files(run) == before


# ----- TaskCheckpoint on its own (Trainer API) -------------------------------------------------------------------
def test_filename_must_name_the_task_and_only_known_fields() -> None:
    with pytest.raises(ValueError, match=r"unknown field \{loss\}"):
        TaskCheckpoint(filename="task{task:02d}-{loss}")
    with pytest.raises(ValueError, match=r"must contain \{task\}"):
        TaskCheckpoint(filename="{kind}-{acc:.3f}")
    assert TaskCheckpoint(filename="t{task}-e{epoch}").fields == {"task", "epoch"}


def tiny_stream(root: Path, callbacks: list[L.Callback], max_epochs: int | None = None
                ) -> tuple[L.Trainer, ImpressLearnModule, EmbeddedDigits]:
    model = ImpressLearnModule(num_tasks=4, num_classes=10, input_shape=(1, 8, 8), num_impressions=2, mask_rule=TopK(0.3),
                               impression_epochs=1, combination_epochs=2,
                               mask_optimizer=functools.partial(torch.optim.Adam, lr=0.01),
                               alpha_optimizer=functools.partial(torch.optim.Adam, lr=0.05))
    data = EmbeddedDigits(num_tasks=4, batch_size=32, train_subset=96, num_workers=0)
    trainer = L.Trainer(accelerator="cpu", max_epochs=max_epochs or model.schedule.total_epochs, logger=False,
                        reload_dataloaders_every_n_epochs=1, enable_progress_bar=False, enable_model_summary=False,
                        deterministic=True, default_root_dir=root, callbacks=callbacks)
    return trainer, model, data


def stream_callbacks(root: Path) -> list[L.Callback]:
    return [ModelCheckpoint(dirpath=root / "checkpoints", save_last="link", save_top_k=1,
                            save_on_train_epoch_end=True), TaskCheckpoint(verbose=False),
            FreezeImpressions(verbose=False), RetentionEvaluator(output_dir=str(root), plots=False)]


def retention_of(trainer: L.Trainer) -> RetentionEvaluator:
    return next(cb for cb in trainer.callbacks if isinstance(cb, RetentionEvaluator))


def test_acc_in_the_filename_comes_from_the_retention_evaluator_the_module_adds(tmp_path: Path) -> None:
    trainer, model, data = tiny_stream(tmp_path, [FreezeImpressions(verbose=False), TaskCheckpoint()])
    trainer.fit(model, datamodule=data)
    matrix = retention_of(trainer).matrix
    assert task_files(tmp_path) == [f"task{t:02d}-{kind}-acc{matrix[t][t]:.4f}.ckpt" for t, kind in enumerate(KINDS)]


def test_every_task_boundary_is_a_checkpoint_that_resumes_exactly(tmp_path: Path) -> None:
    trainer, model, data = tiny_stream(tmp_path / "full", stream_callbacks(tmp_path / "full"))
    trainer.fit(model, datamodule=data)
    matrix = retention_of(trainer).matrix
    folder = tmp_path / "full" / "checkpoints"
    names = task_files(tmp_path / "full")
    assert names == [f"task{t:02d}-{kind}-acc{matrix[t][t]:.4f}.ckpt" for t, kind in enumerate(KINDS)]
    for task, name in enumerate(names):
        saved = torch.load(folder / name, weights_only=False)
        assert saved["epoch"] == model.schedule.stages[task].last_epoch  # the task's last epoch, finished
        retention = next(v for k, v in saved["callbacks"].items() if k.startswith("RetentionEvaluator"))
        assert retention["matrix"] == matrix[: task + 1]
        counts = [int(v) for k, v in saved["state_dict"].items() if k.endswith("bank.count")]
        assert counts and all(c == min(task + 1, 2) for c in counts)  # the impression was frozen before saving

    # Reload the boundary after task 1 (the last impression) and finish the stream from there.
    resumed_trainer, resumed, data = tiny_stream(tmp_path / "resumed", stream_callbacks(tmp_path / "resumed"))
    resumed_trainer.fit(resumed, datamodule=data, ckpt_path=folder / names[1])
    assert retention_of(resumed_trainer).matrix == matrix  # bit-equal floats
    assert task_files(tmp_path / "resumed") == names[2:]
    for key, value in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


ADAPTIVE = ("--model.adaptive_bank", "impress_lightning.placement.AdaptiveBank", "--model.adaptive_bank.target", "0.8",
            "--model.adaptive_bank.max_impressions", "2")


HYBRID = ("--model.hybrid_head", "impress_lightning.HybridHead")


@pytest.mark.slow
@pytest.mark.parametrize("extra, pause_epoch", [((), 2), (HYBRID, 4)], ids=["adaptive", "adaptive_hybrid_head"])
def test_adaptive_bank_decisions_survive_a_kill_and_resume(tmp_path: Path, extra: tuple[str, ...],
                                                           pause_epoch: int) -> None:
    """Tasks 1.. are decided at their first epoch (and, with hybrid heads, again after their head stage); a run
    SIGKILLed inside task 2 (its combination stage, or its head stage) and resumed makes the same decisions,
    states and accuracy matrix as an uninterrupted one."""
    pause = {"class_path": "pause_at.PauseAt",
             "init_args": {"epoch": pause_epoch, "batch": 1, "marker": str(tmp_path / "paused")}}
    args = (*ADAPTIVE, *extra)
    full = start_cli(stream_args(tmp_path / "a", *args), tmp_path / "a.log")
    killed = start_cli(stream_args(tmp_path / "b", *args, f"--trainer.callbacks+={json.dumps(pause)}"),
                       tmp_path / "b.log")
    try:
        wait_for(tmp_path / "paused", killed, tmp_path / "b.log")
        os.kill(killed.pid, signal.SIGKILL)
        assert killed.wait(timeout=60) == -signal.SIGKILL
        resumed = run_cli(stream_args(tmp_path / "b", *args, "--ckpt_path", "last"))
        assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
        assert full.wait(timeout=300) == 0, (tmp_path / "a.log").read_text()[-3000:]
    finally:
        for process in (full, killed):
            if process.poll() is None:
                process.kill()
                process.wait()
    results = [json.loads((tmp_path / r / "quickstart" / "retention.json").read_text()) for r in ("a", "b")]
    assert results[0]["accuracy_matrix"] == results[1]["accuracy_matrix"]
    fields = ("kind", "placement", "best_impression_probe_accuracy", "stored_bytes", "hybrid_head")
    decisions = [[{k: t.get(k) for k in fields} for t in r["tasks"]] for r in results]
    assert decisions[0] == decisions[1]
    assert all((t["hybrid_head"] is not None) == bool(extra) for t in decisions[0] if t["kind"] == "combination")
    kinds = [t["kind"] for t in results[0]["tasks"]]
    assert kinds == ["impression", "impression", "combination", "combination"]  # the bank holds 2: then it is full
    assert "probe" in results[0]["tasks"][1]["placement"] and "bank full" in results[0]["tasks"][3]["placement"]
    weights = [torch.load(tmp_path / r / "quickstart" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
               for r in ("a", "b")]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
