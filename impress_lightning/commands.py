"""The ``impress-lightning`` commands and their one-line descriptions (no heavy imports: ``--help`` is fast)."""

from __future__ import annotations

COMMANDS: dict[str, str] = {
    "fit": "Learn a whole task stream in one run: impressions, then combination tasks; writes retention.json, "
           "figures and per-task checkpoints.",
    "validate": "Evaluate the current task of a checkpoint on its validation split (into <run>/validate/).",
    "test": "Evaluate every learned task of a checkpoint on its test split (into <run>/test/).",
    "export": "Write the compact task bank of a training checkpoint: bit-packed impressions, per-task "
              "coefficients, BN statistics, label maps and normalisation.",
    "predict": "Predict labels with a task bank (or a checkpoint), with a given task id or with task inference.",
}
TRAINER_COMMANDS = ("fit", "validate", "test")
TOOL_MODULES = {"export": "impress_lightning.tools.export", "predict": "impress_lightning.tools.predict"}


def top_level_help() -> str:
    """What ``impress-lightning --help`` prints."""
    names = "{" + ",".join(COMMANDS) + "}"
    lines = [f"usage: impress-lightning [-h] {names} ...", "",
             "Continual learning with ImpressLearn supermask impressions on PyTorch Lightning.", "", "commands:"]
    lines += [f"  {name:<10}{text}" for name, text in COMMANDS.items()]
    lines += ["", "Run `impress-lightning <command> --help` for a command's options, e.g.",
              "  impress-lightning fit --config configs/quickstart.yaml",
              "`impress-lightning fit --config X.yaml --print_config` shows every resolved setting."]
    return "\n".join(lines)

