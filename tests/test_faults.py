"""The fault catalogue: every user mistake ends with exit status 2 and one ``error:`` line (no usage block, no
traceback), and the finished run it was aimed at keeps every file byte for byte.

One tiny finished quickstart run (3 tasks, 1 epoch each) serves all cases; the CLI runs in-process.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch
from torchvision import datasets

from impress_lightning.cli import entry, main
from impress_lightning.run_lock import RunLock, lock_path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
MNIST_CONFIG = str(ROOT / "configs" / "rotated_mnist_lenet.yaml")
TINY = ["--data.init_args.num_tasks", "3", "--model.num_impressions", "2", "--data.init_args.train_subset", "64",
        "--data.init_args.batch_size", "32", "--model.impression_epochs", "1", "--model.combination_epochs", "1",
        "--retention.plots", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false"]


def fit_args(save_dir: Path, *extra: str, command: str = "fit") -> list[str]:
    return [command, "--config", QUICKSTART, "--trainer.logger.init_args.save_dir", str(save_dir), *TINY, *extra]


def snapshot(folder: Path) -> dict[str, object]:
    """Every file's bytes (a symlink's target) under ``folder``, hidden ones included."""
    return {str(p.relative_to(folder)): ("link", str(p.readlink())) if p.is_symlink() else p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() or p.is_symlink()}


class Finished:
    """The finished run: ``root`` (the save_dir), ``run`` (its run directory), an exported bank beside it."""

    def __init__(self, root: Path) -> None:
        self.root, self.run = root, root / "quickstart"
        self.checkpoints = self.run / "checkpoints"
        self.last = self.checkpoints / "last.ckpt"
        self.task = {int(p.name[4:6]): p for p in self.checkpoints.glob("task*.ckpt")}

    def copy(self, to: Path) -> Finished:
        shutil.copytree(self.root, to, symlinks=True)
        return Finished(to)


@pytest.fixture(scope="session")
def finished(tmp_path_factory) -> Finished:
    root = tmp_path_factory.mktemp("finished")
    main(fit_args(root))
    done = Finished(root)
    assert sorted(done.task) == [0, 1, 2] and done.last.exists()
    bank = tmp_path_factory.mktemp("bank") / "bank.pt"
    main(["export", "--ckpt_path", str(done.last), "--output", str(bank)])
    done.bank = bank
    return done


# ----- the cases: (name, setup(finished, tmp) -> (argv, run dir that must stay unchanged), expected text) -----
Setup = Callable[[Finished, Path], tuple[list[str], Path]]


def on_run(build: Callable[[Finished, Path], list[str]]) -> Setup:
    """A case aimed at the shared finished run."""
    return lambda done, tmp: (build(done, tmp), done.root)


def on_copy(prepare: Callable[[Finished], None], build: Callable[[Finished, Path], list[str]]) -> Setup:
    """A case on a copy of the finished run, changed by ``prepare`` first (e.g. a truncated last.ckpt)."""
    def setup(done: Finished, tmp: Path) -> tuple[list[str], Path]:
        copy = done.copy(tmp / "copy")
        prepare(copy)
        return build(copy, tmp), copy.root
    return setup


def write(path: Path, content: bytes | str) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def tensor_file(tmp: Path, x: torch.Tensor) -> str:
    torch.save(x, tmp / "x.pt")
    return str(tmp / "x.pt")


def truncate_last(done: Finished) -> None:
    target = done.last.resolve()
    target.write_bytes(target.read_bytes()[:2000])


def drop_last(done: Finished) -> None:
    for path in done.checkpoints.glob("*.ckpt"):
        if not path.name.startswith("task"):
            path.unlink()


def predict(done: Finished, *args: str) -> list[str]:
    return ["predict", "--bank", str(done.bank), *args]


def older_checkpoint(done: Finished, tmp: Path) -> str:
    """``done.last`` as the code before hybrid heads wrote it: no ``hybrid_head`` setting, no head buffers."""
    ckpt = torch.load(done.last, weights_only=False)
    del ckpt["hyper_parameters"]["hybrid_head"]
    for key in [k for k in ckpt["state_dict"] if k.startswith("table.head_")]:
        del ckpt["state_dict"][key]
    torch.save(ckpt, tmp / "old.ckpt")
    return str(tmp / "old.ckpt")


NAN = torch.full((2, 1, 8, 8), float("nan"))
CASES: list[tuple[str, Setup, str]] = [
    # configs and the parser
    ("unknown-key", on_run(lambda d, t: fit_args(d.root, "--model.no_such_key", "1")),
     "unrecognized arguments: --model.no_such_key 1 (see `impress-lightning fit --help`)"),
    ("wrong-type", on_run(lambda d, t: fit_args(d.root, "--model.impression_epochs", "abc")),
     "model.impression_epochs: expected int. Got value: abc"),
    ("bad-choice", on_run(lambda d, t: fit_args(d.root, "--model.impression_source", "foo")),
     "model.impression_source: expected one of ['heterogeneous', 'homogeneous', 'random', 'supsup']. Got value: foo"),
    ("union-type", on_run(lambda d, t: fit_args(d.root, "--trainer.max_epochs", "x")),
     "trainer.max_epochs: expected int. Got value: x (see"),
    ("unknown-command", on_run(lambda d, t: ["fitt"]), "invalid choice: 'fitt'"),
    ("missing-config", on_run(lambda d, t: ["fit", "--config", str(t / "none.yaml")]),
     "none.yaml does not exist: pass an existing YAML file"),
    ("config-is-folder", on_run(lambda d, t: ["fit", "--config", str(t)]), "is a folder: pass a YAML file"),
    ("malformed-yaml", on_run(lambda d, t: ["fit", "--config", str(write(t / "bad.yaml", "model:\n  a: [1,\n"))]),
     "bad.yaml is not valid YAML at line 3, column 1"),
    ("bad-setting", on_run(lambda d, t: fit_args(d.root, "--model.num_impressions", "9")),
     "num_impressions=9 > num_tasks=3"),
    ("save-dir-is-a-file", lambda d, t: (fit_args(write(t / "f", "x")), t),
     "f is a file, not a folder, so run directory"),
    # data
    ("data-dir-is-a-file", on_run(lambda d, t: ["fit", "--config", MNIST_CONFIG, "--trainer.logger.init_args.save_dir",
                                                str(d.root), "--data.init_args.data_dir", str(write(t / "f", "x"))]),
     "is a file, not a folder: pass the folder that holds the datasets"),
    ("data-missing", on_run(lambda d, t: ["fit", "--config", MNIST_CONFIG, "--trainer.logger.init_args.save_dir",
                                          str(d.root), "--data.init_args.data_dir", str(t)]),
     "MNIST not found under"),
    ("download-without-network", on_run(lambda d, t: [
        "fit", "--config", MNIST_CONFIG, "--trainer.logger.init_args.save_dir", str(d.root),
        "--data.init_args.data_dir", str(t), "--data.init_args.download", "true"]),
     "MNIST download into"),
    ("bad-data-setting", on_run(lambda d, t: fit_args(d.root, "--data.init_args.batch_size", "0")),
     "error: batch_size=0 must be >= 1"),
    ("bad-batches-per-step", on_run(lambda d, t: fit_args(d.root, "--data.init_args.batches_per_step", "0")),
     "error: batches_per_step=0 must be >= 1 (1: one batch per training step)"),
    # resuming: the checkpoint is read and checked before anything is renamed or written
    ("resume-other-backbone", on_run(lambda d, t: fit_args(d.root, "--model.backbone", "fc1024",
                                                           "--ckpt_path", "last")),
     "model.backbone: 'fc1024' in the config, 'lenet_300_100' in the checkpoint"),
    ("resume-other-num-tasks", on_run(lambda d, t: fit_args(d.root, "--data.init_args.num_tasks", "4",
                                                            "--ckpt_path", "last")),
     "model.num_tasks: 4 in the config, 3 in the checkpoint; data.num_tasks: 4"),
    ("resume-other-source", on_run(lambda d, t: fit_args(d.root, "--model.impression_source", "supsup",
                                                         "--ckpt_path", "last")),
     "model.impression_source: 'supsup' in the config, 'heterogeneous' in the checkpoint"),
    ("resume-other-dataset", on_run(lambda d, t: fit_args(
        d.root, "--data", "impress_lightning.data.TaskSequenceDataModule", "--data.init_args.family", "permute",
        "--data.init_args.num_tasks", "3", "--ckpt_path", "last")),
     "data class: 'impress_lightning.data.TaskSequenceDataModule' in the config"),
    ("resume-other-subset", on_run(lambda d, t: fit_args(d.root, "--data.init_args.train_subset", "32",
                                                         "--ckpt_path", "last")),
     "data.train_subset: 32 in the config, 64 in the checkpoint"),
    ("resume-file-other-backbone", on_run(lambda d, t: fit_args(d.root, "--model.backbone", "fc1024",
                                                                "--ckpt_path", str(d.task[1]))),
     "model.backbone: 'fc1024' in the config, 'lenet_300_100' in the checkpoint"),
    ("resume-file-other-epochs", on_run(lambda d, t: fit_args(d.root, "--model.impression_epochs", "2",
                                                              "--ckpt_path", str(d.task[1]))),
     "model.impression_epochs: 2 in the config, 1 in the checkpoint"),
    ("resume-missing-file", on_run(lambda d, t: fit_args(d.root, "--ckpt_path", str(t / "none.ckpt"))),
     "none.ckpt does not exist"),
    ("resume-folder", on_run(lambda d, t: fit_args(d.root, "--ckpt_path", str(d.checkpoints))),
     "checkpoints is a folder: pass a checkpoint file"),
    ("resume-garbage", on_run(lambda d, t: fit_args(d.root, "--ckpt_path", str(write(t / "g.ckpt", "garbage")))),
     "g.ckpt cannot be read as a checkpoint"),
    ("resume-truncated-file", on_run(lambda d, t: fit_args(d.root, "--ckpt_path", str(
        write(t / "cut.ckpt", d.task[2].read_bytes()[:5000])))), "cut.ckpt cannot be read as a checkpoint"),
    ("resume-truncated-last", on_copy(truncate_last, lambda d, t: fit_args(d.root, "--ckpt_path", "last")),
     "last.ckpt cannot be read as a checkpoint"),
    ("resume-foreign", on_run(lambda d, t: fit_args(d.root, "--ckpt_path", str(t / "other.ckpt"))),
     "other.ckpt is not an impress-lightning checkpoint"),
    ("fresh-fit-over-results", on_run(lambda d, t: fit_args(d.root)), "already holds checkpoints, retention.json"),
    ("last-without-last", on_copy(drop_last, lambda d, t: fit_args(d.root, "--ckpt_path", "last")),
     "holds no last*.ckpt"),
    # test / validate
    ("test-other-num-tasks", on_run(lambda d, t: fit_args(d.root, "--data.init_args.num_tasks", "4", "--ckpt_path",
                                                          str(d.last), command="test")), "data.num_tasks: 4"),
    ("test-older-checkpoint-new-setting", on_run(lambda d, t: fit_args(
        d.root, "--model.hybrid_head", "impress_lightning.HybridHead", "--ckpt_path", older_checkpoint(d, t),
        command="test")), "model.hybrid_head: ('HybridHead', {'epochs': 1"),
    ("test-garbage", on_run(lambda d, t: fit_args(d.root, "--ckpt_path", str(write(t / "g.ckpt", b"\x80\x02")),
                                                  command="test")), "cannot be read as a checkpoint"),
    ("validate-missing", on_run(lambda d, t: fit_args(d.root, "--ckpt_path", str(t / "none.ckpt"),
                                                      command="validate")), "none.ckpt does not exist"),
    # export
    ("export-garbage", on_run(lambda d, t: ["export", "--ckpt_path", str(write(t / "g.ckpt", "x")), "--output",
                                            str(t / "b.pt")]), "g.ckpt cannot be read as a checkpoint"),
    ("export-missing", on_run(lambda d, t: ["export", "--ckpt_path", str(t / "none.ckpt"),
                                            "--output", str(t / "b.pt")]),
     "none.ckpt does not exist"),
    ("export-over-a-result", on_run(lambda d, t: ["export", "--ckpt_path", str(d.last), "--output",
                                                  str(d.run / "retention.json")]), "already exists"),
    ("export-foreign", on_run(lambda d, t: ["export", "--ckpt_path", str(t / "other.ckpt"), "--output", str(t / "b")]),
     "is not an impress-lightning checkpoint"),
    ("export-unknown-option", on_run(lambda d, t: ["export", "--ckpt_path", str(d.last), "--output", str(t / "b.pt"),
                                                   "--bogus", "1"]),
     "unrecognized arguments: --bogus 1 (see `impress-lightning export --help`)"),
    # predict
    ("predict-nan", on_run(lambda d, t: predict(d, "--input", tensor_file(t, NAN), "--task", "0")),
     "holds 128 NaN or infinite value(s) (first in input 0)"),
    ("predict-inf-with-inference", on_run(lambda d, t: predict(d, "--input", tensor_file(
        t, torch.zeros(3, 1, 8, 8).index_fill_(0, torch.tensor([2]), float("inf"))), "--infer")),
     "NaN or infinite value(s) (first in input 2)"),
    ("predict-wrong-shape", on_run(lambda d, t: predict(d, "--input", tensor_file(t, torch.zeros(2, 1, 28, 28)),
                                                       "--task", "0")), "must hold one float tensor [N, 1, 8, 8]"),
    ("predict-raw-pixels", on_run(lambda d, t: predict(d, "--input", tensor_file(t, torch.full((2, 1, 8, 8), 255.0)),
                                                      "--task", "0")), "far outside the"),
    ("predict-integers", on_run(lambda d, t: predict(d, "--input", tensor_file(t, torch.zeros(2, 1, 8, 8,
                                                                                           dtype=torch.uint8)),
                                                    "--task", "0")), "got torch.uint8"),
    ("predict-empty", on_run(lambda d, t: predict(d, "--input", tensor_file(t, torch.zeros(0, 1, 8, 8)),
                                                 "--task", "0")), "holds no inputs"),
    ("predict-unknown-task", on_run(lambda d, t: predict(d, "--input", tensor_file(t, torch.zeros(2, 1, 8, 8)),
                                                        "--task", "7")), "task 7 is not in this bank"),
    ("predict-missing-input", on_run(lambda d, t: predict(d, "--input", str(t / "none.pt"), "--task", "0")),
     "none.pt does not exist"),
    ("predict-garbage-bank", on_run(lambda d, t: ["predict", "--bank", str(write(t / "b.pt", "x")), "--input",
                                                  str(t), "--task", "0"]), "b.pt"),
    ("predict-no-input-option", on_run(lambda d, t: predict(d, "--task", "0")),
     "the following arguments are required: input (see `impress-lightning predict --help`)"),
]


@pytest.mark.parametrize("name, setup, expected", CASES, ids=[case[0] for case in CASES])
def test_a_user_mistake_is_one_line_and_changes_nothing(name: str, setup: Setup, expected: str, finished: Finished,
                                                        tmp_path: Path, capsys, monkeypatch) -> None:
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {}}, tmp_path / "other.ckpt")

    def offline(self, *args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")

    monkeypatch.setattr(datasets.MNIST, "download", offline)  # the same answer with or without network
    argv, run = setup(finished, tmp_path)
    before = snapshot(run)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        entry(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2, err[-2000:]
    assert len(errors) == 1 and expected in errors[0], err[-2000:]
    assert "Traceback" not in err and "usage:" not in err
    assert snapshot(run) == before


def test_a_checkpoint_older_than_a_setting_is_tested_as_before(finished: Finished, tmp_path: Path) -> None:
    # Settings added since (here hybrid_head, with its buffers) left at their defaults mean what came before.
    done = finished.copy(tmp_path / "run")
    now = main(fit_args(done.root, "--ckpt_path", str(done.last), command="test")).trainer.callback_metrics
    old = main(fit_args(done.root, "--ckpt_path", older_checkpoint(done, tmp_path),
                        command="test")).trainer.callback_metrics
    assert now and {k: float(v) for k, v in old.items()} == {k: float(v) for k, v in now.items()}


def test_a_directory_held_by_a_live_run_is_refused_and_a_stale_lock_is_taken_over(finished: Finished, capsys) -> None:
    held = RunLock.acquire(finished.run)  # a live run (here: this process, through another open file)
    try:
        before = snapshot(finished.root)
        with pytest.raises(SystemExit) as exit_info:
            entry(fit_args(finished.root, "--ckpt_path", "last"))
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert exit_info.value.code == 2 and len(errors) == 1
        assert f"run directory {finished.run} is in use by another live run (pid" in errors[0]
        assert snapshot(finished.root) == before
        with pytest.raises(ValueError, match="in use by another live run"):
            RunLock.acquire(finished.run)
    finally:
        held.release()
    assert not lock_path(finished.run).exists()
    # A killed run leaves its lock file but no flock on it: the next run takes it over.
    write(lock_path(finished.run), json.dumps({"pid": 999999, "host": "gone"}))
    lock = RunLock.acquire(finished.run)
    assert lock.took_over == {"pid": 999999, "host": "gone"}
    lock.release()
    assert not lock_path(finished.run).exists()


def test_a_lock_on_a_new_directory_leaves_no_trace(tmp_path: Path) -> None:
    lock = RunLock.acquire(tmp_path / "runs" / "new")
    assert lock_path(tmp_path / "runs" / "new").exists() and not (tmp_path / "runs" / "new").exists()
    lock.release()
    lock.release()  # idempotent
    assert list(tmp_path.iterdir()) == []


# ----- numerics ------------------------------------------------------------------------------------------------
def test_a_non_finite_loss_stops_the_run_records_nothing_and_the_run_resumes(finished: Finished, tmp_path: Path,
                                                                             capsys) -> None:
    """α lr 1e30 blows task 2 (the first combination task) up at once: the run stops there with one line, task
    2 gets no retention row and no checkpoint, and ``--ckpt_path last`` with a sane lr finishes the stream."""
    args = fit_args(tmp_path, "--model.combination_epochs", "2")
    with pytest.raises(SystemExit) as exit_info:
        entry([*args, "--model.alpha_optimizer.init_args.lr", "1e30"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2 and len(errors) == 1, errors
    assert "error: non-finite training loss nan at task 2, stage 2 (combination), epoch 2, batch" in errors[0]
    assert "step" in errors[0] and "model.alpha_optimizer" in errors[0]
    run = tmp_path / "quickstart"
    assert len(json.loads((run / "retention.json").read_text())["accuracy_matrix"]) == 2  # tasks 0 and 1 only
    assert sorted(p.name[:6] for p in (run / "checkpoints").glob("task*.ckpt")) == ["task00", "task01"]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1  # the last good epoch

    main([*args, "--ckpt_path", "last"])
    matrix = json.loads((run / "retention.json").read_text())["accuracy_matrix"]
    reference = json.loads((finished.run / "retention.json").read_text())["accuracy_matrix"]
    assert len(matrix) == 3 and matrix[:2] == reference[:2]  # the impressions are those of an untroubled run


def guard_step(guard, loss: float, coefficient: float = 0.5) -> None:
    from types import SimpleNamespace

    stage = SimpleNamespace(kind="combination", task=1, index=1)
    coefficients = [torch.zeros(1), torch.tensor([coefficient])]  # task 0's, then the trained task 1's
    module = SimpleNamespace(current_stage=stage, table=SimpleNamespace(coefficients=coefficients))
    trainer = SimpleNamespace(world_size=1, current_epoch=3, global_step=7)
    guard.on_train_batch_end(trainer, module, {"loss": torch.tensor(loss)}, None, 0)


def test_the_guard_warns_on_a_diverging_loss_and_stops_at_a_non_finite_coefficient() -> None:
    from impress_lightning.callbacks import NonFiniteError, NonFiniteGuard

    guard = NonFiniteGuard(divergence_factor=1e6)
    guard_step(guard, 2.0)
    guard_step(guard, 1e6)  # 5e5 x its start: no warning yet
    with pytest.warns(UserWarning, match=r"training loss at task 1, stage 1 \(combination\).* is 3e\+06, 1\.5e\+06x"):
        guard_step(guard, 3e6)
    with pytest.raises(NonFiniteError, match=r"non-finite coefficients at task 1, stage 1 \(combination\), "
                                             r"epoch 3, batch 0, step 7"):
        guard_step(guard, 2.0, coefficient=float("inf"))
    with pytest.raises(NonFiniteError, match="non-finite training loss inf"):
        guard_step(guard, float("inf"))
    with pytest.raises(ValueError, match="divergence_factor=1 must be > 1"):
        NonFiniteGuard(divergence_factor=1)


# ----- atomic writes -------------------------------------------------------------------------------------------
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch) -> None:
    from impress_lightning import atomic
    from impress_lightning.plots import plot_accuracy_matrix

    target = write(tmp_path / "retention.json", "old")
    monkeypatch.setattr(atomic.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError, match="killed"):
        atomic.atomic_write(target, "new")
    with pytest.raises(OSError, match="killed"):
        plot_accuracy_matrix([[0.5, None], [0.5, 0.6]], ["impression", "combination"], tmp_path / "retention.png")
    assert [p.name for p in tmp_path.iterdir()] == ["retention.json"] and target.read_text() == "old"
    monkeypatch.undo()
    atomic.atomic_write(target, "new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["retention.json"]
