"""End-to-end through the `impress-lightning` command: help, print_config, a tiny fit, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from impress_lightning.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


def tiny_fit_args(save_dir: Path, *extra: str) -> list[str]:
    return ["fit", "--config", QUICKSTART, "--trainer.logger.init_args.save_dir", str(save_dir),
            "--trainer.enable_progress_bar", "false", "--data.init_args.num_tasks", "3",
            "--data.init_args.train_subset", "128", "--model.num_impressions", "2", "--model.impression_epochs", "2",
            "--model.combination_epochs", "1", *extra]


def test_help_documents_options_from_docstrings(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--model.impression_source" in out and "dedicated mask for every task" in out
    assert "--retention.split" in out and "--freeze_impressions.verbose" in out


def test_print_config_resolves_the_quickstart(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", QUICKSTART, "--print_config"])
    out = capsys.readouterr().out
    assert "num_impressions: 3" in out and "impress_lightning.data.EmbeddedDigits" in out
    assert "callbacks.TaskCheckpoint" in out  # per-task checkpoints are on in every config


@pytest.mark.slow
def test_fit_writes_retention_results_with_zero_forgetting(tmp_path):
    main(tiny_fit_args(tmp_path))
    run = tmp_path / "quickstart"
    result = json.loads((run / "retention.json").read_text())
    matrix = result["accuracy_matrix"]
    assert len(matrix) == 3
    for i, row in enumerate(matrix):  # lower-triangular: task j is unseen (None) until trained
        assert all(v is not None for v in row[: i + 1]) and all(v is None for v in row[i + 1:])
    assert result["bwt"] == 0.0 and result["forgetting"] == 0.0
    assert [t["kind"] for t in result["tasks"]] == ["impression", "impression", "combination"]
    # the quickstart's combination task: one α per impression for each of the first layer's 300 neurons, one per
    # impression for the two other layers, stored as float16
    assert result["tasks"][2]["trainable_parameters"] == 300 * 2 + 2 * 2
    assert result["tasks"][2]["stored_bytes"] == 2 * (300 * 2 + 2 * 2)
    for name in ("retention.png", "alpha.png", "config.yaml", "metrics.csv"):
        assert (run / name).stat().st_size > 0, name
    assert (run / "checkpoints" / "last.ckpt").exists()

    # Resuming keeps the earlier metrics (CSVLogger would delete them) and leaves the results in place.
    history = (run / "metrics.csv").read_text()
    main(tiny_fit_args(tmp_path, "--ckpt_path", "last"))
    assert (run / "metrics.before-resume-1.csv").read_text() == history
    assert json.loads((run / "retention.json").read_text())["accuracy_matrix"] == matrix

    # `test` on the checkpoint reproduces the last row and writes beside, not over, the fit's files.
    fit_config = (run / "config.yaml").read_text()
    main(["test", "--config", QUICKSTART, "--trainer.logger.init_args.save_dir", str(tmp_path),
          "--trainer.enable_progress_bar", "false", "--data.init_args.num_tasks", "3",
          "--model.num_impressions", "2", "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    assert (run / "config.yaml").read_text() == fit_config
    tested = (run / "test" / "metrics.csv").read_text().splitlines()
    header, values = tested[0].split(","), tested[-1].split(",")
    for task in range(3):
        logged = float(values[header.index(f"test/acc_task{task:02d}")])
        assert logged == pytest.approx(matrix[-1][task], abs=1e-6)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "impress_lightning", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_bad_config_values_give_one_line_errors(tmp_path):
    result = run_cli("fit", "--config", QUICKSTART, "--model.num_impressions", "9", cwd=tmp_path)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: num_impressions=9") and "lower num_impressions" in last
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()  # nothing written for a run that never started


def test_missing_dataset_names_the_path_and_the_fix(tmp_path):
    result = run_cli("fit", "--config", str(ROOT / "configs" / "rotated_mnist_lenet.yaml"),
                     "--data.init_args.data_dir", str(tmp_path / "nodata"),
                     "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert str(tmp_path / "nodata" / "MNIST" / "raw") in last and "download=true" in last
