"""The package's shape: top-level exports, no top-level `callbacks`, a plain Trainer runs the stream, no
import cycles, and the project's own command help."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from impress_lightning.cli import main
from impress_lightning.commands import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
SHORT = {"impression_epochs": 2, "combination_epochs": 2}  # the quickstart stream, fewer epochs


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def test_everything_a_user_writes_is_a_top_level_export(tmp_path):
    result = run_python("from impress_lightning import ImpressLearnModule, TaskSequenceDataModule, "
                        "FreezeImpressions, RetentionEvaluator, TaskCheckpoint, load_task_bank, PerNeuron, TopK, "
                        "AdaptiveBank, RotatedMNIST; print('ok')", tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_no_top_level_callbacks_package_and_a_users_callbacks_py_changes_nothing(tmp_path):
    missing = run_python("import callbacks", tmp_path)
    assert missing.returncode != 0 and "No module named 'callbacks'" in missing.stderr
    (tmp_path / "callbacks.py").write_text("raise RuntimeError('the user callbacks.py was imported')\n")
    cli = subprocess.run([sys.executable, "-m", "impress_lightning", "fit", "--config", str(QUICKSTART),
                          "--print_config"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert "impress_lightning.callbacks.TaskCheckpoint" in cli.stdout


def test_top_level_help_lists_every_command_in_the_projects_words(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for name, text in COMMANDS.items():
        assert f"  {name}" in out and text in out
    assert "Runs the full optimization routine" not in out  # Lightning's own wording
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--help"])
    assert exit_info.value.code == 0 and COMMANDS["export"] in " ".join(capsys.readouterr().out.split())


def _module_imports(path: Path, package: str) -> set[str]:
    """impress_lightning modules that ``path`` imports at run time (TYPE_CHECKING blocks excluded)."""
    tree = ast.parse(path.read_text())
    skip = {id(node) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for node in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == package or name.startswith(package + ".")}


def test_no_import_cycle_inside_the_package():
    files = {}
    for folder, prefix in ((ROOT / "impress_lightning", "impress_lightning"), (ROOT / "callbacks", "impress_lightning.callbacks")):
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join([prefix, *parts])] = path
    graph = {name: _module_imports(path, "impress_lightning") & set(files) for name, path in files.items()}
    assert graph["impress_lightning.module"], "the walk found no imports: it is broken"
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            # a package's __init__ importing its own submodules is how packages work, not a cycle
            if dep.startswith(name + "."):
                continue
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, trail + [dep])
        state[name] = 2

    for name in sorted(files):
        if name not in state:
            visit(name, [name])


@pytest.mark.slow
def test_a_plain_trainer_runs_the_quickstart_stream_like_the_cli(tmp_path):
    import impress_lightning.nn as rules
    from impress_lightning import EmbeddedDigits, ImpressLearnModule

    config = yaml.safe_load(QUICKSTART.read_text())
    overrides = [arg for key, value in SHORT.items() for arg in (f"--model.{key}", str(value))]
    main(["fit", "--config", str(QUICKSTART), "--trainer.logger.init_args.save_dir", str(tmp_path / "cli"),
          "--trainer.enable_progress_bar", "false", *overrides])
    cli_matrix = json.loads((tmp_path / "cli" / "quickstart" / "retention.json").read_text())["accuracy_matrix"]

    model_cfg, data_cfg = config["model"], config["data"]["init_args"]

    def built(spec: dict) -> object:  # the quickstart's rule objects, by hand
        return getattr(rules, spec["class_path"].rsplit(".", 1)[1])(**spec.get("init_args", {}))

    mask_lr = model_cfg["mask_optimizer"]["init_args"]["lr"]
    alpha_args = model_cfg["alpha_optimizer"]["init_args"]
    L.seed_everything(config["seed_everything"])
    module = ImpressLearnModule(
        backbone=model_cfg["backbone"], num_tasks=data_cfg["num_tasks"], num_classes=10, input_shape=(1, 8, 8),
        num_impressions=model_cfg["num_impressions"], mask_rule=built(model_cfg["mask_rule"]),
        combination=built(model_cfg["combination"]), alpha_regularization=model_cfg["alpha_regularization"],
        mask_optimizer=lambda p: torch.optim.Adam(p, lr=mask_lr),
        alpha_optimizer=lambda p: torch.optim.Adam(p, **alpha_args), **SHORT)
    data = EmbeddedDigits(**data_cfg)
    trainer = L.Trainer(max_epochs=module.schedule.total_epochs, reload_dataloaders_every_n_epochs=1,
                        default_root_dir=tmp_path / "plain", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, deterministic=True, accelerator="cpu")
    trainer.fit(module, datamodule=data)
    plain = json.loads((tmp_path / "plain" / "retention.json").read_text())["accuracy_matrix"]
    assert plain == cli_matrix
    assert len(plain) == data_cfg["num_tasks"] and all(row[i] is not None for i, row in enumerate(plain))
